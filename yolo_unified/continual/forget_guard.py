"""A scheduled share: the shared network learns at the stage's rate while the finished tasks keep their score on
their stored images, and slower while they do not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xywh2xyxy
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.common import SHARED_MODULES
from yolo_unified.continual.base import Strategy
from yolo_unified.continual.replay import collate, training_form
from yolo_unified.settings import setting


def seg_score(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean IoU of the arg-max of `logits` (upsampled to the masks) against `mask` (255 ignored), over the classes
    found in either."""
    pred = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    valid = mask != 255
    pred, mask = pred[valid], mask[valid].long()
    classes = torch.unique(torch.cat([pred, mask]))
    ious = [((pred == c) & (mask == c)).sum() / ((pred == c) | (mask == c)).sum() for c in classes]
    return float(torch.stack(ious).mean()) if ious else 0.0


def det_score(det: torch.Tensor, batch: dict, conf: float = 0.25) -> float:
    """F1 of the boxes kept by NMS above `conf` against the labelled ones: a match has the class and IoU >= 0.5
    (each labelled box matched once)."""
    kept = non_max_suppression(det, conf_thres=conf, iou_thres=0.7, nc=det.shape[1] - 4)
    h, w = batch["img"].shape[-2:]
    scale = torch.tensor([w, h, w, h], device=det.device)
    hits, predicted = 0, 0
    for i, boxes in enumerate(kept):
        own = batch["batch_idx"] == i
        truth, truth_cls = xywh2xyxy(batch["bboxes"][own]) * scale, batch["cls"][own].view(-1)
        predicted += len(boxes)
        if not len(boxes) or not len(truth):
            continue
        iou = box_iou(boxes[:, :4], truth) * (boxes[:, 5:6] == truth_cls[None])
        free = torch.ones(len(truth), dtype=torch.bool, device=det.device)
        for row in iou:  # NMS ranks by confidence: the surest box takes its best free match first
            best = int((row * free).argmax())
            if row[best] >= 0.5 and free[best]:
                free[best], hits = False, hits + 1
    labelled = len(batch["bboxes"])
    return 2 * hits / (predicted + labelled) if predicted + labelled else 0.0


def stored_score(task: str, outputs: tuple, batch: dict) -> float:
    """A finished task's score on stored images from the model's inference outputs ``(det, seg, cls, raw)``: seg
    mean IoU, det F1 at IoU 0.5, cls top-1."""
    det, seg, cls, _ = outputs
    if task == "seg":
        return seg_score(seg, batch["semantic_mask"])
    if task == "cls":
        return float((cls.argmax(1) == batch["cls"].view(-1)).float().mean())
    return det_score(det, batch)


class ForgetGuard(Strategy):
    """cfg: ``{tolerance: 0.02, every: 10, images: 16, factor: 2.0, floor: 0.01, groups: [backbone, neck, tower]}``.

    Every ``every`` optimizer steps, each finished task is scored on (up to) ``images`` of its stored images (replay's
    memory, the same ones each time, the model in eval mode as validation runs it): seg mean IoU, det F1, cls top-1.
    When one has lost more than ``tolerance`` of its score at the stage's start, the learning rate of the ``groups``
    is divided by ``factor``, down to ``floor`` times the stage's rate; when all have lost less than half of it, it is
    multiplied back, up to the stage's rate. The network learns freely where the new task does not disturb the old
    ones and slows down where it does, without looking at any validation set.
    """

    key = "forget_guard"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``forget_guard``."""

        tolerance: float = setting(0.02, "share of a finished task's score on its stored images it may lose")
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
        """Keep the finished tasks' stored images for the checks, and their scores at the stage's start."""
        stored, n = self.context.memory.get("replay", {}), self.settings.images
        tasks = dict.fromkeys([*self.context.previous, *self.context.old_classes])
        self.samples = {
            t: collate([training_form(s, trainer.device) for s in stored[t][:n]]) for t in tasks if stored.get(t)
        }
        if not self.samples:
            LOGGER.warning("forget_guard: no stored images of a finished task (replay stores them); nothing to guard")
        self.start = self.scores(unwrap_model(trainer.model))
        self.scale, self.steps, self.scales = 1.0, 0, []

    @torch.no_grad()
    def scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Each finished task's score on its checked stored images (the model's modes restored afterwards)."""
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            return {t: stored_score(t, model(b["img"]), b) for t, b in self.samples.items()}
        finally:
            for m, mode in modes.items():
                m.training = mode

    def lr_scales(self, trainer) -> dict[str, float]:
        """The groups' share of their rate for this optimizer step (checked every ``every`` steps)."""
        self.steps += 1
        if self.samples and self.steps % self.settings.every == 0:
            now = self.scores(unwrap_model(trainer.model))
            lost = max([1 - now[t] / self.start[t] for t in now if self.start[t] > 0], default=0.0)
            s = self.settings
            if lost > s.tolerance:
                self.scale = max(s.floor, self.scale / s.factor)
            elif lost < s.tolerance / 2:
                self.scale = min(1.0, self.scale * s.factor)
        self.scales.append(self.scale)
        return dict.fromkeys(self.settings.groups, self.scale)

    def after_model_train(self, trainer) -> None:
        """Say at each epoch's start how fast the groups learned in the last one."""
        if self.scales:
            mean = sum(self.scales) / len(self.scales)
            groups = "+".join(self.settings.groups)
            LOGGER.info(f"forget_guard: {groups} at x{mean:.3g} of the stage's rate (last epoch's mean)")
            self.scales = []
