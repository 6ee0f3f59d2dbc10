"""Names every layer shares: the task table, the model's module groups, list-valued keys and run files.

This module is the bottom of the import order (docs/architecture.md): it imports nothing of yolo_unified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    """One task of the unified model: its Ultralytics task and the metrics it is reported on, its score first."""

    ultralytics_task: str  # the Ultralytics task whose trainer, validator and loss the unified task uses
    report_columns: tuple[tuple[str, str], ...]  # (column of the forgetting report, the validator's metric name)

    @property
    def primary_metric(self) -> str:
        """The validator's metric name of the task's score (what forgetting is measured on)."""
        return self.report_columns[0][1]


TASK_TABLE: dict[str, TaskInfo] = {  # in the order the sequential protocol learns them and the head holds them
    "seg": TaskInfo("semantic", (("mIoU", "metrics/mIoU"),)),
    "det": TaskInfo("detect", (("mAP50", "metrics/mAP50(B)"), ("mAP50-95", "metrics/mAP50-95(B)"))),
    "cls": TaskInfo("classify", (("top-1", "metrics/accuracy_top1"),)),
}
TASKS = tuple(TASK_TABLE)  # ("seg", "det", "cls")
ULTRALYTICS_TASK = {t: info.ultralytics_task for t, info in TASK_TABLE.items()}  # our task -> Ultralytics' task
PRIMARY_METRIC = {t: info.primary_metric for t, info in TASK_TABLE.items()}  # our task -> its score's metric name

# Module groups of the unified model (the model YAML: layers 0-9 the YOLOv8n backbone, then the FPN, then the head).
BACKBONE_LAYERS = 10  # layers 0-9
NECK_LAYER = 10  # UnifiedFPN
HEAD_LAYER = 11  # UnifiedHead: a shared tower, then one projection per task
HEAD_PARTS = {"tower": ("tower",), "det": ("det", "dfl"), "seg": ("seg",), "cls": ("cls",)}
MODULE_PREFIXES: dict[str, tuple[str, ...]] = {  # group -> parameter-name prefixes
    "backbone": tuple(f"model.{i}." for i in range(BACKBONE_LAYERS)),
    "neck": (f"model.{NECK_LAYER}.",),
    **{group: tuple(f"model.{HEAD_LAYER}.{part}." for part in parts) for group, parts in HEAD_PARTS.items()},
}
SHARED_MODULES = ("backbone", "neck", "tower")  # what every task uses: where task gradients meet


def module_of(name: str) -> str:
    """The module group (backbone, neck, tower, det, seg, cls; else "other") of a parameter or module name."""
    name = name if name.endswith(".") else name + "."
    return next((group for group, prefixes in MODULE_PREFIXES.items() if name.startswith(prefixes)), "other")


# Files of a sequential protocol's run folder.
STATE_FILE = "protocol.json"  # the protocol's settings and each finished stage's record
MEMORY_KEY = "continual"  # the checkpoint key of the strategies' memory (stored images, statistics); exports drop it
MEMORY_FILE = "memory.pt"  # where runs of 0.x kept that memory instead: beside each stage's best.pt (still read)


def listed(value: Any) -> list:
    """A list-valued key as a list: a list or tuple as it is, ``a,b`` or ``[a, b]`` split on its commas."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [item.strip() for item in str(value).strip("[]").split(",") if item.strip()]


def task_imgsz(model: Any, task: str | None = None) -> int | None:
    """The image size `model` (a unified model, as a checkpoint holds it) scores `task` at: the size the task was
    trained at, kept on the model as ``task_imgsz``; without `task`, the deployment size (the largest of them, what
    predict and export use). Models saved before ``task_imgsz`` existed give their training ``imgsz``."""
    sizes = getattr(model, "task_imgsz", None) or {}
    if task in sizes:
        return int(sizes[task])
    if task is None and sizes:
        return max(int(s) for s in sizes.values())
    args = getattr(model, "args", None)
    imgsz = (args if isinstance(args, dict) else vars(args) if args is not None else {}).get("imgsz")
    return int(imgsz) if isinstance(imgsz, (int, float)) else None


def learned_tasks(model: Any) -> set[str]:
    """The tasks a unified model was trained on: those with a trained image size (``task_imgsz``) and class names."""
    return set(getattr(model, "task_imgsz", None) or ()) & set(getattr(model, "task_names", None) or {})
