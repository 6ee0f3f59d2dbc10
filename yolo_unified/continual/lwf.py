"""Learning without Forgetting (Li & Hoiem, 2016): distil the old tasks' outputs of the model before the stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from yolo_unified.continual.base import Strategy
from yolo_unified.settings import setting

OUTPUTS = {"det": ("scores", "boxes"), "seg": ("seg",), "cls": ("cls",)}  # raw head outputs of each task


class LwF(Strategy):
    """cfg: ``{weight: 1.0, temperature: 2.0}``.

    The model the stage starts from (``StageContext.teacher``: the previous stage's best weights, frozen) runs on the
    current stage's images; the current model's outputs for every finished task
    are pulled toward it: softened-softmax KL for segmentation and classification logits, binary KL for the
    detection class scores and KL between DFL box distributions (all zero when the outputs agree).
    """

    key = "lwf"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``lwf``."""

        weight: float = setting(1.0, "weight of the distillation term")
        temperature: float = setting(2.0, "softmax temperature of the distributions compared")

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted distance between the model's and the teacher's outputs for the finished tasks."""
        if self.context.teacher(batch["img"].device) is None:
            return None
        target = self.context.teacher_outputs(batch["img"])[-1]
        t = self.settings.temperature
        term = sum(task_distance(task, preds, target, t) for task in self.context.previous)
        term = self.settings.weight * term
        return term, {self.key: term.detach()}


def task_distance(task: str, student: dict, teacher: dict, temperature: float) -> torch.Tensor:
    """`output_distance` summed over the raw outputs of `task` (`OUTPUTS`), the student's restricted to the teacher's
    classes (a grown head's old rows)."""
    return sum(
        output_distance(name, student[name][:, : teacher[name].shape[1]], teacher[name], temperature)
        for name in OUTPUTS[task]
    )


def output_distance(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Distillation loss of one raw head output (channels in dim 1; zero when the outputs agree): binary KL for the
    detection class scores, softened-softmax KL at `temperature` for the others (box-side distributions, seg and cls
    logits), averaged over positions (pixels, anchors) and images."""
    if name == "scores":  # independent sigmoid classes: binary KL, zero when the logits agree
        p = teacher.sigmoid()
        log_s, log_s_not, log_t, log_t_not = (F.logsigmoid(x) for x in (student, -student, teacher, -teacher))
        return (p * (log_t - log_s) + (1 - p) * (log_t_not - log_s_not)).mean()
    if name == "boxes":  # (B, 4 * reg_max, A): one distribution over reg_max bins per box side and anchor
        b, c, a = student.shape
        student, teacher = (x.view(b, 4, c // 4, a).transpose(1, 2) for x in (student, teacher))
    positions = student[0, 0].numel()  # pixels, box sides x anchors, or 1 for image-level logits
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")
    return kl * t * t / positions
