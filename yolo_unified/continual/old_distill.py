"""Old-class distillation: when a stage adds classes to a task, the old classes' outputs are pulled toward those of
the model before the stage, on the new images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from yolo_unified.common import TASKS
from yolo_unified.continual.base import Strategy
from yolo_unified.continual.lwf import task_distance
from yolo_unified.continual.old_labels import BACKGROUND
from yolo_unified.nn.tasks import batch_task
from yolo_unified.settings import setting


def unbiased_seg_distance(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL from the old model's pixel distributions over its ``C_old`` classes to the new model's, where the new
    model's background is background or any new class (MiB's unbiased distillation, Cermelli et al., CVPR 2020):
    for the old model a new-class pixel was background, so predicting a new class there is no forgetting.

    `student` ``(B, C, h, w)`` with the old classes first, `teacher` ``(B, C_old, h, w)``; mean over pixels and
    images, times the squared temperature.
    """
    t, old = temperature, teacher.shape[1]
    log_p = F.log_softmax(student / t, 1)
    others = [BACKGROUND, *range(old, student.shape[1])]
    background = torch.logsumexp(log_p[:, others], 1, keepdim=True)
    kept = [c for c in range(old) if c != BACKGROUND]
    log_student = torch.cat([background, log_p[:, kept]], 1)
    log_teacher = F.log_softmax(teacher / t, 1)[:, [BACKGROUND, *kept]]
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()
    return kl * t * t


class OldDistill(Strategy):
    """cfg: ``{weight: 1.0, temperature: 2.0, tasks: the tasks it distils (all)}``.

    When a stage adds classes to a task the model has (``StageContext.old_classes``), the outputs of the old classes
    on each training batch are pulled toward the model's before the stage:
    - det: the old classes' score logits (binary KL) and the box-side distributions (KL), as LwF's detection terms,
      on every anchor;
    - seg: MiB's unbiased distillation (`unbiased_seg_distance`): new classes count as background for the old model;
    - cls: the softened distribution over the old classes (the new model's old logits, renormalised), as LwF does
      for class-incremental learning.
    Weighted by ``weight`` and shown as ``old_dist``. ``tasks`` limits it to some tasks (the recipe leaves
    classification to replay: there distillation lowered the old classes' top-1, benchmarks/README.md).
    """

    key = "old_distill"
    keeps_old_classes = True

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``old_distill``."""

        weight: float = setting(1.0, "weight of the distillation term")
        temperature: float = setting(2.0, "softmax temperature of the distributions compared")
        tasks: list[Literal["seg", "det", "cls"]] = setting(list(TASKS), "the tasks it distils")

    def keeps_old_classes_of(self, task: str) -> bool:
        """The tasks of ``tasks`` (every task without it)."""
        return task in self.settings.tasks

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted distance of the old classes' outputs from the model's before the stage."""
        task, img = batch_task(batch), batch["img"]
        if task not in self.context.old_classes or not self.keeps_old_classes_of(task):
            return None
        if self.context.teacher(img.device) is None:
            return None
        target, t = self.context.teacher_outputs(img)[-1], self.settings.temperature
        if task == "seg":
            term = unbiased_seg_distance(preds["seg"], target["seg"], t)
        else:
            term = task_distance(task, preds, target, t)
        term = self.settings.weight * term
        return term, {"old_dist": term.detach()}
