"""Gradient clipping with a per-stage max norm (Ultralytics hard-codes 10)."""

from __future__ import annotations

import torch

from yolo_unified.continual.base import Strategy


class GradClip(Strategy):
    """cfg: the max total gradient norm (``clip_grad: 1.0``); ``0`` or ``null`` turns clipping off."""

    key = "clip_grad"

    def before_optimizer_step(self, trainer) -> None:
        """Clip the unscaled gradients of all parameters to the configured norm."""
        if self.value:
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm=float(self.value))
