"""Staged and per-module learning rates: one multiplier per module group; 0 freezes a group exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from yolo_unified.common import module_of
from yolo_unified.continual.base import Strategy
from yolo_unified.settings import setting

MULTIPLIER = "learning-rate multiplier of the group (null: 1, the stage's rate)"


class LRMult(Strategy):
    """cfg: ``{backbone: 0.01, neck: 0.1, tower: 0.1, det: 0.1, seg: 0.0, cls: 10}`` (missing groups: 1.0).

    The optimizer gets one parameter group per module group (and Ultralytics' decay / no-decay / bias split), at
    ``lr0 * multiplier``. A group at 0 is left out of the optimizer and its parameters stop requiring gradients, so
    neither weight decay nor momentum can move them, and its BatchNorm statistics are held as well. The trainer starts
    the bias warmup at 0 instead of ``warmup_bias_lr``, which Ultralytics applies to every bias group alike.
    """

    key = "lr_mult"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``lr_mult``: one multiplier per module group (`yolo_unified.common.MODULE_PREFIXES`)."""

        backbone: float | None = setting(None, MULTIPLIER)
        neck: float | None = setting(None, MULTIPLIER)
        tower: float | None = setting(None, MULTIPLIER)
        det: float | None = setting(None, MULTIPLIER)
        seg: float | None = setting(None, MULTIPLIER)
        cls: float | None = setting(None, MULTIPLIER)

    def lr_multipliers(self) -> dict[str, float]:
        """The configured multipliers (the module groups given)."""
        return {group: m for group, m in asdict(self.settings).items() if m is not None}

    def after_model_train(self, trainer) -> None:
        """Hold the running statistics of frozen groups' BatchNorm layers."""
        frozen = {k for k, v in self.lr_multipliers().items() if v == 0}
        for name, m in trainer.model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and module_of(name) in frozen:
                m.eval()
