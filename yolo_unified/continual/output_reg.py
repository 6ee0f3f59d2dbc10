"""Output regularisation: L2 between the finished tasks' raw outputs before and during the stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolo_unified.continual.lwf import LwF


class OutputReg(LwF):
    """cfg: ``{weight: 1.0}``. Same frozen teacher as LwF; the distance is the mean squared error of raw outputs."""

    key = "output_reg"

    def distance(self, name: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of the raw output."""
        return F.mse_loss(student, teacher)
