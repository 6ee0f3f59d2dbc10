"""Pseudo-label rehearsal: the model before the stage labels the current images for every finished task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import clip_boxes, xyxy2xywh

from yolo_unified.continual.base import Strategy
from yolo_unified.continual.replay import loss_per_image
from yolo_unified.settings import setting


def pseudo_labels(outputs: tuple, task: str, img: torch.Tensor, conf: float, iou: float = 0.7) -> dict:
    """Hard labels of `task` for the images `img` from a model's inference outputs ``(det, seg, cls, raw)``.

    - seg: the arg-max class of every pixel of the stride-8 logits; pixels whose top probability is below `conf` are
      255 (ignored by the loss);
    - det: the boxes kept by Ultralytics' NMS above `conf` (one class per box), clipped to the image, as normalised
      ``xywh`` in YOLO's batch format (``bboxes``, ``cls``, ``batch_idx``);
    - cls: the arg-max class of each image.
    The result is a batch of `task` with the images, ready for that task's Ultralytics loss.
    """
    det, seg, cls, _ = outputs
    if task == "seg":
        prob, label = seg.softmax(1).max(1)
        return {"img": img, "semantic_mask": label.masked_fill(prob < conf, 255).to(torch.uint8)}
    if task == "cls":
        return {"img": img, "cls": cls.argmax(1)}
    kept = non_max_suppression(det, conf_thres=conf, iou_thres=iou, nc=det.shape[1] - 4)
    h, w = img.shape[-2:]
    scale = torch.tensor([w, h, w, h], device=img.device, dtype=det.dtype)
    boxes = torch.cat([xyxy2xywh(clip_boxes(k[:, :4].clone(), (h, w))) / scale for k in kept])
    index = [torch.full((len(k),), i, device=img.device, dtype=det.dtype) for i, k in enumerate(kept)]
    return {"img": img, "bboxes": boxes, "cls": torch.cat([k[:, 5:6] for k in kept]), "batch_idx": torch.cat(index)}


class PseudoLabel(Strategy):
    """cfg: ``{weight: 1.0, conf: 0.25}``.

    On every training batch, the model the stage starts from (``StageContext.teacher``) labels the batch's images
    for every finished task (`pseudo_labels`: class maps, boxes after NMS above ``conf``, image classes), and the
    current model is trained on those labels with each task's own Ultralytics loss (CE + Dice, box/cls/DFL,
    cross-entropy), weighted by ``weight``. The current stage's data thus rehearses the finished tasks as the teacher
    solved them, without any of their images. (Soft targets, the teacher's full distributions, are ``lwf``.)
    """

    key = "pseudo_label"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``pseudo_label``."""

        weight: float = setting(1.0, "weight of the pseudo-labelled losses")
        conf: float = setting(0.25, "least confidence of a pseudo-label")

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted sum of the finished tasks' losses on the teacher's labels of this batch."""
        img = batch["img"]
        if not self.context.previous or self.context.teacher(img.device) is None:  # no finished task to label
            return None
        outputs = self.context.teacher_outputs(img)
        conf = self.settings.conf
        term = sum(loss_per_image(model, preds, pseudo_labels(outputs, t, img, conf)) for t in self.context.previous)
        term = self.settings.weight * term
        return term, {"pseudo": term.detach()}
