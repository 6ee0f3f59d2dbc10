"""A scheduled share: the shared network learns at the stage's rate while the finished tasks hold on their stored
images, and slower while they do not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.common import SHARED_MODULES
from yolo_unified.continual.base import Strategy
from yolo_unified.continual.replay import collate, loss_per_image, training_form
from yolo_unified.settings import setting


@contextmanager
def held_statistics(model: torch.nn.Module) -> Iterator[None]:
    """`model` in training mode (its heads give their training outputs) but for its BatchNorm layers, which normalise
    with their running statistics and leave them as they are; every layer's mode is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in modes:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


class ForgetGuard(Strategy):
    """cfg: ``{tolerance: 0.1, every: 10, images: 16, factor: 2.0, floor: 0.01, groups: [backbone, neck, tower]}``.

    Every ``every`` optimizer steps, each finished task's own loss is computed on (up to) ``images`` of its stored
    images (replay's memory, the same ones each time, BatchNorm at its running statistics, no gradient). When one
    has risen more than ``tolerance`` (a share of its value at the stage's start), the learning rate of the ``groups``
    is divided by ``factor``, down to ``floor`` times the stage's rate; when all are below half the tolerance it is
    multiplied by it, up to the stage's rate. The network learns freely where the new task does not disturb the old
    ones, and slows down where it does, without looking at any validation set.
    """

    key = "forget_guard"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``forget_guard``."""

        tolerance: float = setting(0.1, "rise of a finished task's loss on its stored images that slows the groups")
        every: int = setting(10, "optimizer steps between checks")
        images: int = setting(16, "stored images per finished task a check scores")
        factor: float = setting(2.0, "the groups' rate is divided (or multiplied) by this at a check")
        floor: float = setting(0.01, "lowest share of the stage's rate the groups fall to")
        groups: list[Literal["backbone", "neck", "tower", "det", "seg", "cls"]] = setting(
            list(SHARED_MODULES), "the module groups whose rate it schedules"
        )

    def lr_multipliers(self) -> dict[str, float]:
        """The scheduled groups at the stage's rate: they get parameter groups of their own to scale."""
        return dict.fromkeys(self.settings.groups, 1.0)

    def setup(self, trainer) -> None:
        """Keep the finished tasks' stored images for the checks and their losses at the stage's start."""
        stored = self.context.memory.get("replay", {})
        tasks = dict.fromkeys([*self.context.previous, *self.context.old_classes])
        n = self.settings.images
        self.samples = {
            t: collate([training_form(s, trainer.device) for s in stored[t][:n]]) for t in tasks if stored.get(t)
        }
        if not self.samples:
            LOGGER.warning(
                "forget_guard: no stored images of a finished task (replay: stores them); nothing is scheduled"
            )
        self.start = self.memory_losses(unwrap_model(trainer.model))
        self.scale, self.steps, self.scales = 1.0, 0, []

    @torch.no_grad()
    def memory_losses(self, model: torch.nn.Module) -> dict[str, float]:
        """Each finished task's loss per image on its checked stored images."""
        with held_statistics(model):
            return {t: float(loss_per_image(model, model.predict(b["img"]), b)) for t, b in self.samples.items()}

    def lr_scales(self, trainer) -> dict[str, float]:
        """The groups' share of their rate for this optimizer step (checked every ``every`` steps)."""
        self.steps += 1
        if self.samples and self.steps % self.settings.every == 0:
            now = self.memory_losses(unwrap_model(trainer.model))
            rise = max(now[t] / self.start[t] - 1 for t in now if self.start[t] > 0)
            s = self.settings
            if rise > s.tolerance:
                self.scale = max(s.floor, self.scale / s.factor)
            elif rise < s.tolerance / 2:
                self.scale = min(1.0, self.scale * s.factor)
        self.scales.append(self.scale)
        return dict.fromkeys(self.settings.groups, self.scale)

    def after_model_train(self, trainer) -> None:
        """Say at each epoch's start how fast the groups learned in the last one."""
        if self.scales:
            mean = sum(self.scales) / len(self.scales)
            LOGGER.info(
                f"forget_guard: {'+'.join(self.settings.groups)} at x{mean:.3g} of the stage's rate (last epoch's mean)"
            )
            self.scales = []
