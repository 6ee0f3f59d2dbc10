"""The multi-task data YAML: one file with a ``seg``, ``det`` and ``cls`` section, each an Ultralytics dataset."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.nn.autobackend import check_class_names
from ultralytics.utils import YAML
from ultralytics.utils.patches import PIL_FALLBACK_SUFFIXES

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


def image_files(source: str | Path) -> list[Path]:
    """The images of a split, sorted: a folder (searched recursively, e.g. class folders) or a text file listing them
    one per line (``./`` relative to the file), as Ultralytics reads splits."""
    source = Path(source)
    if source.is_dir():
        files = source.rglob("*")
    else:
        lines = [x.strip() for x in source.read_text(encoding="utf-8-sig").splitlines() if x.strip()]
        files = (source.parent / x[2:] if x.startswith("./") else Path(x) for x in lines)
    return sorted(f for f in files if f.suffix[1:].lower() in IMG_FORMATS)


def not_an_image(file: Path) -> str:
    """Why the image file `file` cannot be read (empty, or no decoder knows its contents); empty when it can be.

    Ultralytics skips such a file, or reports a missing HEIF plugin (``pi_heif``) that would not read it either. Only
    the file's first bytes are read; the formats Ultralytics decodes through PIL (AVIF, HEIC) are checked for size only.
    """
    if not file.is_file():
        return ""  # a missing file is reported by Ultralytics' loaders
    if file.stat().st_size == 0:
        return "is an empty file, not an image"
    if file.suffix.lower() not in PIL_FALLBACK_SUFFIXES and not cv2.haveImageReader(str(file)):
        return "is not an image (no image decoder reads its contents)"
    return ""


def check_images(files: Iterable[Path]) -> None:
    """Raise a ValueError naming each of `files` that is empty or not an image (`not_an_image`)."""
    if bad := [f"{file} {why}" for file in files if (why := not_an_image(file))]:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{'; '.join(bad[:5])}{more} (remove or replace {'them' if len(bad) > 1 else 'it'})")


def task_data(cfg: dict[str, Any], task: str, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Return the Ultralytics-style dataset dict of one task, checking that the requested splits exist and that
    their image files are images (`check_images`)."""
    if task not in cfg["tasks"]:
        raise KeyError(f"{cfg['yaml_file']} has no '{task}:' section (it has {sorted(cfg['tasks'])})")
    data = dict(cfg["tasks"][task])
    for split in splits:
        if not data.get(split):
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}:' has no '{split}:' split")
        if not Path(data[split]).exists():
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}' {split} split not found at {data[split]}")
        check_images(image_files(data[split]))
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
