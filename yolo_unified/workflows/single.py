"""One task, one run: ``yolo-unified train task=seg|det|cls``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yolo_unified.common import TASKS, ULTRALYTICS_TASK
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.workflows.base import run_dir


def train_task(task: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Train one task with its unified trainer (``resume=`` a last.pt: in that run's folder); return
    ``{"weights": best.pt, "save_dirs": {task: run dir}}``."""
    if task not in TASKS:
        raise ValueError(f"task='{task}' is not a yolo-unified task; use one of {list(TASKS)} (or omit it)")
    keys = dict(keys)
    save_dir = run_dir(keys.pop("project", None), keys.pop("name", None), "train", keys.get("exist_ok", False))
    trainer = TRAINERS[task](overrides=keys if keys.get("resume") else {**keys, "save_dir": str(save_dir)})
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    return {"weights": str(weights), "save_dirs": {task: str(trainer.save_dir)}}


def resumed_task(resume: Any) -> str | None:
    """The task of the single-task run whose checkpoint ``resume=`` names (its training arguments' Ultralytics task);
    None for anything else (a protocol folder, a joint run's checkpoint)."""
    if not (isinstance(resume, (str, Path)) and str(resume).endswith(".pt") and Path(resume).is_file()):
        return None
    args = torch.load(resume, map_location="cpu", weights_only=False).get("train_args") or {}
    ours = {ultralytics: task for task, ultralytics in ULTRALYTICS_TASK.items()}
    return None if args.get("joint") else ours.get(args.get("task"))
