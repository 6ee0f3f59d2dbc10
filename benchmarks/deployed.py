"""Scores of the deployed path (section ``deployed=True`` of benchmarks.hw2): every task as ``yolo-unified predict``
serves it, one letterboxed pass at one image size, detection after the predictor's NMS (one class per box, conf 0.25,
iou 0.7, max_det 300), classification on the whole letterboxed image; scored by the validators' own metric code."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import nms
from ultralytics.utils.checks import check_imgsz

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import ultralytics_data
from yolo_unified.common import task_imgsz
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.data.transforms import letterbox
from yolo_unified.files import load_checkpoint
from yolo_unified.models.unified.val import (
    UnifiedClassificationValidator,
    UnifiedDetectionValidator,
    UnifiedSegmentationValidator,
)

PREDICT_NMS = {"conf_thres": 0.25, "iou_thres": 0.7, "max_det": 300}  # Ultralytics' predictor defaults


class PredictorNMSMixin:
    """A detection validator that scores the boxes the predictor returns: one class per box after NMS at the
    predictor's defaults. Works for the unified model and for an Ultralytics detector (both give boxes first)."""

    def postprocess(self, preds: Any) -> list[dict[str, torch.Tensor]]:
        """The predictor's NMS on the detection output."""
        if isinstance(preds, (list, tuple)):
            preds = preds[0]
        kept = nms.non_max_suppression(preds, multi_label=False, **PREDICT_NMS)
        return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in kept]


class DeployedDetectionValidator(PredictorNMSMixin, UnifiedDetectionValidator):
    """The unified model's detection as the predictor serves it."""


class SeparateDeployedDetectionValidator(PredictorNMSMixin, DetectionValidator):
    """An Ultralytics detector's detection as its predictor serves it."""


def letterboxed_tensor(image: Image.Image, imgsz: int) -> torch.Tensor:
    """An RGB image letterboxed as the predictor does, as a float CHW tensor in [0, 1]."""
    boxed, _ = letterbox(np.asarray(image), [imgsz, imgsz])
    return torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))).float() / 255


class DeployedClassificationValidator(UnifiedClassificationValidator):
    """Top-1 of the class the predictor returns: the whole image letterboxed, no centre crop."""

    def build_dataset(self, img_path: str):
        """Ultralytics' classification val dataset with the predictor's letterbox in place of resize + crop."""
        dataset = super().build_dataset(img_path)
        dataset.torch_transforms = partial(letterboxed_tensor, imgsz=self.args.imgsz)
        return dataset


DEPLOYED = {
    "seg": UnifiedSegmentationValidator,
    "det": DeployedDetectionValidator,
    "cls": DeployedClassificationValidator,
}


def checkpoint_imgsz(weights: str | Path) -> int:
    """The image size a checkpoint predicts at by default: its deployment size (`task_imgsz`)."""
    return task_imgsz(load_checkpoint(weights)[0])


def deployed_scores(
    weights: str, data: str, out: Path, imgsz: int | None = None, n_boot: int = 1000
) -> dict[str, dict[str, Any]]:
    """Every task's bootstrapped score on the deployed path at one image size `imgsz` (default: the checkpoint's)."""
    names = task_names(load_data_config(data))
    imgsz = check_imgsz(imgsz or checkpoint_imgsz(weights), stride=32)
    return {t: bootstrapped(weights, data, t, imgsz, names[t], n_boot, out / t, DEPLOYED[t]) for t in names}


def separate_deployed_detection(weights: str | Path, data: str, out: Path, n_boot: int = 1000) -> dict[str, Any]:
    """The separate Ultralytics detector's (`benchmarks.separate`) mAP50 as its predictor serves it."""
    names, det_data = task_names(load_data_config(data))["det"], ultralytics_data(data, "det", out)
    return bootstrapped(
        str(weights), det_data, "det", checkpoint_imgsz(weights), names, n_boot, out / "deployed",
        SeparateDeployedDetectionValidator,
    )  # fmt: skip
