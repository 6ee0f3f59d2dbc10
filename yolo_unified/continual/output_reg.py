"""Output regularisation: L2 between the finished tasks' raw outputs before and during the stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from yolo_unified.continual.base import Strategy
from yolo_unified.continual.lwf import OUTPUTS
from yolo_unified.settings import setting


def output_l2(task: str, student: dict, teacher: dict) -> torch.Tensor:
    """Mean squared difference of the raw outputs of `task` (`OUTPUTS`: detection score and box-bin logits,
    segmentation logits, classification logits), summed over those outputs; the student's restricted to the teacher's
    classes (a grown head's old rows)."""
    return sum(F.mse_loss(student[name][:, : teacher[name].shape[1]], teacher[name]) for name in OUTPUTS[task])


class OutputReg(Strategy):
    """cfg: ``{weight: 1.0}``.

    The model the stage starts from (``StageContext.teacher``, as for LwF) runs on the current stage's images, and
    the current model's raw outputs of every finished task are pulled toward its outputs by their mean squared
    difference (`output_l2`), weighted by ``weight``. Unlike LwF's KL, which compares distributions (a logit shift
    common to every class costs nothing), the L2 holds the logits themselves.
    """

    key = "output_reg"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``output_reg``."""

        weight: float = setting(1.0, "weight of the L2 term")

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted L2 between the model's and the teacher's raw outputs of the finished tasks."""
        if self.context.teacher(batch["img"].device) is None:
            return None
        target = self.context.teacher_outputs(batch["img"])[-1]
        term = self.settings.weight * sum(output_l2(task, preds, target) for task in self.context.previous)
        return term, {self.key: term.detach()}
