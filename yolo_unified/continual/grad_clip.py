"""Gradient clipping with a per-stage max norm (Ultralytics hard-codes 10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolo_unified.continual.base import Strategy
from yolo_unified.settings import setting


class GradClip(Strategy):
    """cfg: the max total gradient norm (``clip_grad: 1.0``); ``0`` or ``null`` turns clipping off."""

    key = "clip_grad"
    scalar = "max_norm"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``clip_grad`` (``clip_grad: 1.0`` sets max_norm)."""

        max_norm: float = setting(10.0, "largest total gradient norm before each optimizer step")

    def before_optimizer_step(self, trainer) -> None:
        """Clip the unscaled gradients of all parameters to the configured norm."""
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm=self.settings.max_norm)
