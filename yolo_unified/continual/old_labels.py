"""Old-class pseudo-labels: when a stage adds classes to a task, the model before the stage labels the old classes on
the new images, and those labels join the new ones in the task's own loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.ops import xywh2xyxy

from yolo_unified.continual.base import Strategy
from yolo_unified.continual.pseudo_label import pseudo_labels
from yolo_unified.nn.modules import upsample_logits
from yolo_unified.nn.tasks import batch_task
from yolo_unified.settings import setting

BACKGROUND = 0  # the segmentation class of "no object" (VOC's and the built-in data's class 0)


def merge_boxes(batch: dict, old: dict, iou: float) -> tuple[dict, int]:
    """`batch` (normalised ``xywh`` boxes) with the boxes of `old` added, except those overlapping one of the batch's
    own boxes in the same image by IoU >= `iou`: a label of the data is never replaced. The boxes come out grouped by
    image, each image's own boxes first. Returns it and the number of boxes added."""
    new_xyxy, old_xyxy = xywh2xyxy(batch["bboxes"]), xywh2xyxy(old["bboxes"])
    same_image = old["batch_idx"][:, None] == batch["batch_idx"][None, :]
    overlap = (box_iou(old_xyxy, new_xyxy) * same_image).amax(1) if len(new_xyxy) else old_xyxy.new_zeros(len(old_xyxy))
    keep = overlap < iou
    merged = {k: torch.cat([batch[k], old[k][keep].to(batch[k].dtype)]) for k in ("bboxes", "cls", "batch_idx")}
    order = merged["batch_idx"].argsort(stable=True)  # Ultralytics' loss reads the boxes grouped by image
    return {**batch, **{k: v[order] for k, v in merged.items()}}, int(keep.sum())


def shift_background(mask: torch.Tensor, old_logits: torch.Tensor, conf: float) -> torch.Tensor:
    """The background shift fixed: pixels `mask` calls background that the old model gives to an old object class
    with probability >= `conf` get that class. Labels of other classes, and ignored pixels, stay as they are.

    `old_logits` ``(B, C_old, h, w)`` are the old model's seg logits at any resolution; `mask` is ``(B, H, W)``.
    """
    prob, label = upsample_logits(old_logits, mask.shape[-2:]).softmax(1).max(1)
    shift = (mask == BACKGROUND) & (label != BACKGROUND) & (prob >= conf)
    return torch.where(shift, label.to(mask.dtype), mask)


class OldLabels(Strategy):
    """cfg: ``{conf: 0.5, iou: 0.5}``.

    When a stage adds classes to a task the model has (``StageContext.old_classes``), the new data labels only the
    new classes: an old-class object in its images is background to the task loss, which would teach the model to
    forget it. On every training batch, the model before the stage labels the old classes on the batch's images:
    - det: its boxes after NMS with confidence >= ``conf`` are added to the batch's boxes, except those overlapping a
      box of the data by IoU >= ``iou`` (ERD, Feng et al., CVPR 2022, and pseudo-label methods after it);
    - seg: pixels the new mask calls background and the old model gives to an old class with probability >= ``conf``
      take that class (the background shift of PLOP, Douillard et al., CVPR 2021);
    - cls: nothing to add (an image has one class); replay of stored images keeps its old classes.
    The task's own loss then trains on both. Shown as ``old_labels``: old-class boxes added per image (det), or the
    share of pixels relabelled (seg).
    """

    key = "old_labels"
    keeps_old_classes = True

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``old_labels``."""

        conf: float = setting(0.5, "least confidence of an old-class label")
        iou: float = setting(0.5, "det: old boxes overlapping a data box this much are left out")

    def keeps_old_classes_of(self, task: str) -> bool:
        """Detection and segmentation: classification images have one class, and nothing to add."""
        return task != "cls"

    def labels(self, batch: dict) -> dict:
        """The batch with the old model's labels of the old classes added where the data has none."""
        task, img = batch_task(batch), batch["img"]
        self.added = None
        if (
            task not in self.context.old_classes
            or not self.keeps_old_classes_of(task)
            or self.context.teacher(img.device) is None
        ):
            return batch
        outputs = self.context.teacher_outputs(img)
        conf = self.settings.conf
        if task == "seg":
            mask = shift_background(batch["semantic_mask"], outputs[1], conf)
            self.added = (mask != batch["semantic_mask"]).float().mean()
            return {**batch, "semantic_mask": mask}
        merged, added = merge_boxes(batch, pseudo_labels(outputs, "det", img, conf), self.settings.iou)
        self.added = torch.tensor(added / len(img))
        return merged

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """No term of its own (the labels join the task loss); shows how many it added."""
        if getattr(self, "added", None) is None:
            return None
        return torch.zeros((), device=batch["img"].device), {self.key: self.added}
