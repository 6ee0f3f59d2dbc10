"""Trainers: Ultralytics' detection, semantic-segmentation and classification trainers, driving the unified model."""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.semantic import SemanticSegmentationTrainer
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK

from yolo_unified.data.config import load_data_config, task_data, task_names
from yolo_unified.models.unified import val
from yolo_unified.nn.tasks import DEFAULT_MODEL_YAML, UnifiedModel


class UnifiedTrainerMixin:
    """What the three task trainers share: multi-task data YAML, the unified model, and pretrained-weight handling.

    Each subclass pairs this mixin with the Ultralytics trainer of its task, so datasets, augmentation, losses,
    progress bars, checkpoints, plots and ``results.csv`` are Ultralytics' own.
    """

    task_key: str = ""  # "seg", "det" or "cls"
    validator_class: type = object

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None):
        """Default the model to the packaged unified YAML; everything else as in Ultralytics."""
        overrides = dict(overrides or {})
        if not overrides.get("model"):
            overrides["model"] = DEFAULT_MODEL_YAML
        super().__init__(cfg, overrides, _callbacks)

    def get_dataset(self) -> dict[str, Any]:
        """Read the multi-task data YAML and return this task's section as an Ultralytics dataset dict."""
        try:
            self.data_config = load_data_config(self.args.data)
            return task_data(self.data_config, self.task_key, splits=("train", self.args.split))
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise RuntimeError(f"Dataset '{self.args.data}' error: {e}") from e

    def setup_model(self) -> dict | None:
        """Build the unified model from a YAML or checkpoint; ``pretrained=`` adds weights from any YOLOv8 checkpoint.

        A ``model=*.pt`` that is not a unified checkpoint (e.g. ``yolov8n.pt``) gives the default unified model with
        that checkpoint's matching tensors. A ``pretrained=`` file that cannot be loaded (missing, offline) only warns.
        """
        if isinstance(self.model, torch.nn.Module):
            return None
        cfg, weights, ckpt = self.model, None, None
        if str(self.model).endswith(".pt"):
            weights, ckpt = load_checkpoint(self.model)
            cfg = weights.yaml if isinstance(weights, UnifiedModel) else DEFAULT_MODEL_YAML
        if isinstance(self.args.pretrained, (str, Path)) and not self.resume:
            try:
                weights = load_checkpoint(self.args.pretrained)[0]
            except Exception as e:
                LOGGER.warning(f"pretrained='{self.args.pretrained}' could not be loaded ({e}); training from scratch.")
        self.model = self.get_model(cfg=cfg, weights=weights, verbose=RANK in {-1, 0})
        return ckpt

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """Return a unified model whose class counts come from the data YAML (all its tasks, not just this one)."""
        names = {**(getattr(weights, "task_names", None) or {}), **task_names(self.data_config)}
        model = UnifiedModel(cfg or DEFAULT_MODEL_YAML, ch=self.data["channels"], task_names=names, verbose=verbose)
        if weights:
            model.load(weights)
        return model

    def set_model_attributes(self):
        """Attach the training arguments (the losses read their gains); class names stay per task on the model."""
        self.model.args = self.args

    def get_validator(self):
        """Return this task's unified validator."""
        return self.validator_class(
            self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks
        )


class UnifiedSegmentationTrainer(UnifiedTrainerMixin, SemanticSegmentationTrainer):
    """Train the unified model on semantic segmentation (Ultralytics' ``semantic`` task: CE + Dice, mIoU)."""

    task_key = "seg"
    validator_class = val.UnifiedSegmentationValidator


class UnifiedDetectionTrainer(UnifiedTrainerMixin, DetectionTrainer):
    """Train the unified model on detection (Ultralytics' ``detect`` task: box/cls/DFL losses, mAP)."""

    task_key = "det"
    validator_class = val.UnifiedDetectionValidator


class UnifiedClassificationTrainer(UnifiedTrainerMixin, ClassificationTrainer):
    """Train the unified model on image classification (Ultralytics' ``classify`` task: cross-entropy, top-1/top-5)."""

    task_key = "cls"
    validator_class = val.UnifiedClassificationValidator


TRAINERS = {
    "seg": UnifiedSegmentationTrainer,
    "det": UnifiedDetectionTrainer,
    "cls": UnifiedClassificationTrainer,
}
