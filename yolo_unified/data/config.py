"""The multi-task data YAML: one file with a ``seg``, ``det`` and ``cls`` section, each an Ultralytics dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.nn.autobackend import check_class_names
from ultralytics.utils import YAML

from yolo_unified.common import TASKS


def load_data_config(data: str | Path) -> dict[str, Any]:
    """Read a multi-task data YAML; return ``{"yaml_file", "path", "tasks": {task: section}}`` with resolved paths.

    ``path`` (the dataset root) resolves against the YAML's folder; ``train``/``val``/``test`` against the root.
    Raises a clear error for a missing file, a file without any task section, or a section without names.
    """
    file = Path(data)
    if not file.is_file():
        raise FileNotFoundError(f"data YAML '{data}' not found")
    d = YAML.load(file) or {}
    root = Path(d.get("path") or ".")
    root = root if root.is_absolute() else (file.parent / root).resolve()
    sections = {t: d[t] for t in TASKS if isinstance(d.get(t), dict)}
    if not sections:
        raise ValueError(f"{file}: no task section found; a yolo-unified data YAML has 'seg:', 'det:' and/or 'cls:'")
    tasks = {}
    for task, section in sections.items():
        if not section.get("names"):
            raise ValueError(f"{file}: section '{task}:' has no 'names:'")
        resolved = {k: v for k, v in section.items() if k not in {"train", "val", "test"}}
        resolved["names"] = check_class_names(section["names"])
        for split in ("train", "val", "test"):
            if section.get(split):
                p = Path(section[split])
                resolved[split] = str(p if p.is_absolute() else root / p)
        tasks[task] = resolved
    return {"yaml_file": str(file.resolve()), "path": root, "tasks": tasks}


def task_data(cfg: dict[str, Any], task: str, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Return the Ultralytics-style dataset dict of one task, checking that the requested splits exist."""
    if task not in cfg["tasks"]:
        raise KeyError(f"{cfg['yaml_file']} has no '{task}:' section (it has {sorted(cfg['tasks'])})")
    data = dict(cfg["tasks"][task])
    for split in splits:
        if not data.get(split):
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}:' has no '{split}:' split")
        if not Path(data[split]).exists():
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}' {split} split not found at {data[split]}")
    data.update(path=str(cfg["path"]), nc=len(data["names"]), channels=3, yaml_file=cfg["yaml_file"])
    return data


def task_names(cfg: dict[str, Any]) -> dict[str, dict[int, str]]:
    """Class names of every task the data YAML describes."""
    return {task: section["names"] for task, section in cfg["tasks"].items()}


def check_heads(model_names: dict[str, dict], data_names: dict[str, dict], model: Any, data: Any) -> None:
    """Raise a ValueError naming `model` and `data` when a task of the data has another class count in the model's
    heads (`model_names`) than in the data (`data_names`); tasks the model lacks count as 0 classes."""
    if bad := [t for t in data_names if len(model_names.get(t, ())) != len(data_names[t])]:
        counts = ", ".join(f"{t} {len(model_names.get(t, ()))} vs {len(data_names[t])}" for t in bad)
        raise ValueError(
            f"model={model}: its heads do not match the class counts of {data} ({counts}; model vs data); use the "
            "data the model was trained on, or train on this data from the model's other weights with pretrained="
        )
