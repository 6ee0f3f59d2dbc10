"""Validators: Ultralytics' detection, semantic-segmentation and classification validators on the unified outputs."""

from __future__ import annotations

import ast
import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.classify import ClassificationValidator
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.semantic import SemanticSegmentationValidator
from ultralytics.nn.autobackend import AutoBackend, check_class_names
from ultralytics.utils import LOGGER, YAML, colorstr

from yolo_unified.common import TASKS, ULTRALYTICS_TASK, learned_tasks, task_imgsz
from yolo_unified.data.classes import class_map, remap_labels
from yolo_unified.data.config import load_data_config, task_data
from yolo_unified.defaults import unified_threads, without_unified_keys
from yolo_unified.files import load_checkpoint
from yolo_unified.nn.tasks import check_class_lists


def model_task_names(model: Any, task: str) -> dict[int, str]:
    """Class names of `task` from a unified model, an AutoBackend wrapping one, or exported-model metadata."""
    metadata = getattr(model, "metadata", None) or {}
    inner = getattr(model, "model", None)
    for names in (getattr(model, "task_names", None), getattr(inner, "task_names", None), metadata.get("task_names")):
        if isinstance(names, str):  # exported metadata: ONNX holds every value as a string
            names = ast.literal_eval(names)
        if isinstance(names, dict) and task in names:  # TorchScript's JSON metadata has string keys: normalise
            return check_class_names(names[task])
    raise ValueError(f"the model has no class names for task '{task}': is it a yolo-unified model?")


def exported_tasks(model: str | Path) -> set[str]:
    """The tasks an exported unified model was trained on (its metadata's ``task_imgsz``)."""
    sizes = (AutoBackend(str(model), device=torch.device("cpu"), verbose=False).metadata or {}).get("task_imgsz")
    return set(ast.literal_eval(sizes) if isinstance(sizes, str) else sizes or ())


def is_multitask_yaml(data: Any) -> bool:
    """True for a yolo-unified data YAML (one with seg/det/cls sections)."""
    if not str(data).endswith((".yaml", ".yml")) or not Path(data).is_file():
        return False
    d = YAML.load(data) or {}
    return any(isinstance(d.get(t), dict) for t in TASKS)


def class_scores(task: str, stats: Any, names: dict[int, str]) -> dict[str, float]:
    """Each labelled class's score by name: seg IoU, det mAP50, cls top-1 recall (from ``(top1, targets)``)."""
    if task == "seg":
        iou, pixels = stats.per_class_iou, stats.nt_per_class
        return {names[c]: float(iou[c]) for c in range(len(pixels)) if pixels[c] > 0}
    if task == "det":
        return {names[int(c)]: float(stats.box.ap50[i]) for i, c in enumerate(stats.ap_class_index)}
    top1, targets = stats
    return {names[int(c)]: float((top1[targets == c] == c).float().mean()) for c in targets.unique()}


class UnifiedValidatorMixin:
    """What the three task validators share: the task's output and class names, the multi-task data YAML (a
    standalone run writes the task's Ultralytics data YAML into its folder), ``per_class()`` scores by class name."""

    task_key: str = ""
    output_index: int = 0  # position of this task's output in the model's (det, seg, cls) tuple
    class_lut: torch.Tensor | None = None  # data class id -> model class id, where the data numbers them otherwise
    data_yaml: str | None = None  # a standalone run's multi-task data YAML (``args.data`` is then the task's own)

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        """Ultralytics' validator; the package's own keys among `args` (train settings) are left out of its check."""
        super().__init__(dataloader, save_dir, without_unified_keys(args), _callbacks)

    def __call__(self, trainer=None, model=None, **kwargs):
        """Validate during training, or standalone on the package's CPU threads with the task's dataset."""
        if trainer is not None:
            return super().__call__(trainer=trainer, model=model, **kwargs)
        if is_multitask_yaml(self.args.data):
            self.data_yaml, self.args.data = self.args.data, self.task_dataset(self.args.data)
        with unified_threads():
            return super().__call__(model=model, **kwargs)

    def task_dataset(self, data: str) -> str:
        """Write this task's Ultralytics data YAML into the run directory and return its path."""
        section = task_data(load_data_config(data), self.task_key, splits=(self.args.split,))
        file = Path(self.save_dir) / f"data-{self.task_key}.yaml"
        file.parent.mkdir(parents=True, exist_ok=True)
        YAML.save(file, {k: v for k, v in section.items() if k != "yaml_file"})
        return str(file)

    def init_metrics(self, model: torch.nn.Module) -> None:
        """Ultralytics' metrics with the model's class names of this task; labels in the model's ids (by name), those of
        classes the model lacks left out."""
        names, kept = model_task_names(model, self.task_key), model.names
        data = self.data_yaml or self.args.data
        ids = class_map(names, self.data["names"], data, self.task_key)
        if all(i < 0 for i in ids):
            raise ValueError(
                f"{data}: the model has none of its '{self.task_key}' classes "
                f"{list(self.data['names'].values())} (the model's: {list(names.values())}); validate on the data the "
                "model was trained on"
            )
        self.class_lut = None if ids == list(range(len(ids))) else torch.tensor(ids)
        if lacking := [self.data["names"][i] for i, m in enumerate(ids) if m < 0]:
            LOGGER.info(f"{self.task_key} val: the model lacks the data's classes {lacking}: their labels are left out")
        model.names = names
        try:
            super().init_metrics(model)
        finally:
            model.names = kept

    def preprocess(self, batch: dict) -> dict:
        """Ultralytics' preprocessing, the labels in the model's class ids."""
        batch = super().preprocess(batch)
        return batch if self.class_lut is None else remap_labels(batch, self.task_key, self.class_lut)

    def postprocess(self, preds: Any) -> Any:
        """Select this task's output, then post-process it exactly as Ultralytics does."""
        if isinstance(preds, (list, tuple)):
            preds = preds[self.output_index]
        if isinstance(preds, torch.Tensor):  # Ultralytics upsamples seg logits itself: see upsample_logits for why
            preds = preds.contiguous()
        return super().postprocess(preds)

    def get_dataloader(self, dataset_path: str, batch_size: int):
        """Build the loader with this task's class names (Ultralytics would take the model's detection names)."""
        self.names = self.data["names"]
        return super().get_dataloader(dataset_path, batch_size)


class UnifiedDetectionValidator(UnifiedValidatorMixin, DetectionValidator):
    """mAP50 / mAP50-95 of the unified model's detection output, by Ultralytics' ``DetectionValidator``."""

    task_key, output_index = "det", 0

    def per_class(self) -> dict[str, float]:
        """mAP50 of each class with validation boxes."""
        return class_scores("det", self.metrics, self.names)


class UnifiedSegmentationValidator(UnifiedValidatorMixin, SemanticSegmentationValidator):
    """mIoU / pixel accuracy of the segmentation output, by Ultralytics' ``SemanticSegmentationValidator``."""

    task_key, output_index = "seg", 1

    def per_class(self) -> dict[str, float]:
        """IoU of each class with validation pixels (background too, as Ultralytics' mIoU counts it)."""
        return class_scores("seg", self.metrics, self.names)


class UnifiedClassificationValidator(UnifiedValidatorMixin, ClassificationValidator):
    """Top-1 / top-5 accuracy of the classification output, by Ultralytics' ``ClassificationValidator``."""

    task_key, output_index = "cls", 2
    yaml_names: dict[int, str] | None = None  # a standalone run: the data YAML's names of the sorted class folders

    def init_metrics(self, model: torch.nn.Module) -> None:
        """As the mixin, the classes named by the data YAML (Ultralytics names a standalone run's by folder)."""
        if self.yaml_names is not None:
            if len(self.yaml_names) != len(self.data["names"]):
                raise ValueError(
                    f"{self.data_yaml}: cls names {len(self.yaml_names)} classes, its 'train' folder (whose class "
                    f"folders Ultralytics numbers) has {len(self.data['names'])}"
                )
            self.data["names"] = self.yaml_names
        super().init_metrics(model)

    def update_metrics(self, preds: torch.Tensor, batch: dict) -> None:
        """Ultralytics' update, without the images of classes the model lacks (class -1 after `remap_labels`)."""
        known = batch["cls"] >= 0
        super().update_metrics(preds[known], {**batch, "cls": batch["cls"][known]})

    def per_class(self) -> dict[str, float]:
        """Top-1 accuracy on each class's validation images (its recall)."""
        return class_scores("cls", (torch.cat(self.pred)[:, 0], torch.cat(self.targets)), self.names)

    def task_dataset(self, data: str) -> str:
        """Return the folder holding this task's ``train/`` and ``val/`` class folders (Ultralytics' layout)."""
        section = task_data(load_data_config(data), "cls", splits=(self.args.split,))
        self.yaml_names = section["names"]
        folder = Path(section[self.args.split])
        if folder.name != self.args.split:
            raise ValueError(
                f"{data}: cls '{self.args.split}:' must be a folder named '{self.args.split}', got {folder}"
            )
        return str(folder.parent)


VALIDATORS = {
    "seg": UnifiedSegmentationValidator,
    "det": UnifiedDetectionValidator,
    "cls": UnifiedClassificationValidator,
}


def validate(
    model: str | Path | torch.nn.Module,
    data: str | Path,
    save_dir: str | Path,
    tasks: list[str] | None = None,
    per_class: bool = False,
    **overrides: Any,
) -> dict[str, dict[str, Any]]:
    """Validate every task the data YAML and `model` (a checkpoint, an export, or a model in memory, validated as a
    copy) share, or just `tasks`, each at the size it was trained at unless ``imgsz`` is given. Returns
    ``{task: {metric: value}}`` (Ultralytics' names; with `per_class`, each class's score by name too); plots go to
    ``save_dir/<task>/``, ``metrics.json`` and ``metrics.csv`` to `save_dir`.
    """
    cfg = load_data_config(data)
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None and str(model).endswith(".pt"):
        module = load_checkpoint(model)[0]
        check_class_lists(module, model)
    trained = learned_tasks(module) if module is not None else exported_tasks(model)
    model_tasks = trained or set(getattr(module, "task_names", None) or TASKS)
    tasks = [t for t in (tasks or TASKS) if t in cfg["tasks"] and t in model_tasks]
    if not tasks:
        raise ValueError(f"{data} and the model share no task")
    save_dir, results, classes = Path(save_dir), {}, {}
    for t in tasks:
        args = {**overrides, "data": str(data), "task": ULTRALYTICS_TASK[t], "mode": "val"}
        if "imgsz" not in overrides and module is not None and (imgsz := task_imgsz(module, t)):
            args["imgsz"] = imgsz
        if isinstance(model, torch.nn.Module):
            validator = VALIDATORS[t](save_dir=save_dir / t, args=args)
            stats = validator(model=deepcopy(model).float())
        else:
            validator = VALIDATORS[t](save_dir=save_dir / t, args={**args, "model": str(model)})
            stats = validator()
        results[t] = {k: float(v) for k, v in stats.items() if k.startswith("metrics/")}
        if per_class:
            classes[t] = validator.per_class()
    write_summary(results, save_dir)
    return {t: {**m, "per_class": classes[t]} for t, m in results.items()} if per_class else results


def write_summary(results: dict[str, dict[str, float]], save_dir: Path) -> None:
    """Log a one-table summary of the tasks' headline metrics and save it as JSON and CSV."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    lines = ["task,metric,value"] + [f"{t},{k},{v:.6f}" for t, m in results.items() for k, v in m.items()]
    (save_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    table = "\n".join(
        f"{t:>5}  " + "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in m.items()) for t, m in results.items()
    )
    LOGGER.info(f"\n{colorstr('bold', 'yolo-unified val')}\n{table}\nResults saved to {colorstr('bold', save_dir)}")
