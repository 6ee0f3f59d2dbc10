"""The multi-task layout every writer of datasets uses: its folders, its data YAML (written with a header that marks
it as yolo-unified's) and COCO boxes as YOLO labels."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

from yolo_unified.files import temporary_name

IGNORE = 255  # VOC "void" mask value, ignored in loss and metrics
LAYOUT = {  # task -> its section of the data YAML, without names; the folders every writer of this layout uses
    "seg": {"train": "seg/images/train", "val": "seg/images/val", "masks_dir": "masks"},
    "det": {"train": "det/images/train", "val": "det/images/val"},
    "cls": {"train": "cls/train", "val": "cls/val"},
}
YAML_HEADER = """\
# yolo-unified multi-task dataset: one file, one Ultralytics dataset section per task (seg, det, cls).
# path       dataset root; a relative path resolves against this YAML file's folder
# seg        semantic segmentation section (Ultralytics 'semantic' task)
# det        object detection section (Ultralytics 'detect' task); YOLO txt labels 'cls cx cy w h' (0-1) are in
#            det/labels/<split>/<stem>.txt, mirroring det/images/<split>/
# cls        image classification section (Ultralytics 'classify' task); one sub-folder per class, class ids
#            follow the sorted folder names
# train, val image folder of each split, relative to path
# masks_dir  masks mirror images/: seg/masks/<split>/<stem>.png, 8-bit class ids, 255 = ignore
# names      class id -> readable name
# any other top-level key records where the dataset came from; training does not read it
"""
SHARED_LAYOUT = {"det": {}, "seg": {"masks_dir": "masks"}}  # task -> its section without names, on shared images
SHARED_YAML_HEADER = """\
# yolo-unified multi-task dataset whose tasks share their images (one image folder per split, labels per task).
# path       dataset root; a relative path resolves against this YAML file's folder
# train, val image folder of each split (images/<split>), relative to path; read by every task section below
# det        object detection section (Ultralytics 'detect' task); YOLO txt labels 'cls cx cy w h' (0-1) are in
#            labels/<split>/<stem>.txt, mirroring images/<split>/; an empty file is an image without objects
# seg        semantic segmentation section (Ultralytics 'semantic' task)
# masks_dir  masks mirror images/: masks/<split>/<stem>.png, 8-bit class ids, 0 = background, 255 = ignore
# names      class id -> readable name
# any other top-level key records where the dataset came from; training does not read it
"""
OWN_YAML_FIRST_LINES = {header.splitlines()[0] for header in (YAML_HEADER, SHARED_YAML_HEADER)}


def check_own_yaml(yaml_path: Path) -> None:
    """Raise a ValueError when `yaml_path` exists and yolo-unified did not write it (it lacks one of its headers)."""
    if not yaml_path.exists():
        return
    try:
        with yaml_path.open(encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        first = ""
    if first not in OWN_YAML_FIRST_LINES:
        raise ValueError(
            f"yaml={yaml_path} exists and yolo-unified did not write it (it lacks the '# yolo-unified ...' header); "
            "choose another yaml= (or dst=), or move the file away"
        )


def publish_yaml(yaml_path: Path, write: Callable[[Path], Any]) -> bool:
    """Write a data YAML with `write` to a draft, then over `yaml_path` unless the same; return whether it changed."""
    draft = temporary_name(yaml_path).with_suffix(".yaml")  # Ultralytics' YAML reads only *.yaml files
    try:
        write(draft)
        if yaml_path.is_file() and filecmp.cmp(draft, yaml_path, shallow=False):
            return False
        os.replace(draft, yaml_path)
        return True
    finally:
        draft.unlink(missing_ok=True)


def write_data_yaml(
    yaml_path: str | Path,
    root: str | Path,
    names: dict[str, list[str]],
    extra: dict | None = None,
    shared_splits: Iterable[str] = (),
) -> Path:
    """Write the multi-task data YAML for the dataset at `root`, one section per task in `names` (`path` relative to
    the YAML when inside its folder); `extra` adds provenance keys; with `shared_splits` the tasks share one image
    folder per split (`SHARED_LAYOUT`). Returns the YAML path."""
    yaml_path, root, shared_splits = Path(yaml_path), Path(root).resolve(), list(shared_splits)
    layout, header = (SHARED_LAYOUT, SHARED_YAML_HEADER) if shared_splits else (LAYOUT, YAML_HEADER)
    unknown = set(names) - set(layout)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)} in names; valid tasks are {list(layout)}")
    folder = yaml_path.parent.resolve()
    data: dict[str, Any] = {"path": root.relative_to(folder).as_posix() if root.is_relative_to(folder) else str(root)}
    data.update({split: f"images/{split}" for split in shared_splits})
    for task, section in layout.items():
        if task in names:
            data[task] = {**section, "names": dict(enumerate(names[task]))}
    data.update(extra or {})
    YAML.save(yaml_path, data, header=header)
    return yaml_path


def yolo_box(
    bbox: list[float], width: int, height: int, min_side: float = 0.0
) -> tuple[float, float, float, float] | None:
    """A COCO ``[x, y, w, h]`` pixel box clipped to the image as normalised ``(cx, cy, w, h)``; None if too small."""
    x, y, w, h = bbox
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x2 - x1 <= min_side or y2 - y1 <= min_side:
        return None
    return (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
