"""One task, one run: ``yolo-unified train task=seg|det|cls``."""

from __future__ import annotations

from typing import Any

from yolo_unified.common import TASKS
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.workflows.base import run_dir


def train_task(task: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Train one task with its unified trainer; return ``{"weights": best.pt, "save_dirs": {task: run dir}}``."""
    if task not in TASKS:
        raise ValueError(f"task='{task}' is not a yolo-unified task; use one of {list(TASKS)} (or omit it)")
    keys = dict(keys)
    save_dir = run_dir(keys.pop("project", None), keys.pop("name", None), "train", keys.get("exist_ok", False))
    trainer = TRAINERS[task](overrides={**keys, "save_dir": str(save_dir)})
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    return {"weights": str(weights), "save_dirs": {task: str(trainer.save_dir)}}
