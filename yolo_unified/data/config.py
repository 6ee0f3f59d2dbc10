"""The multi-task data YAML: one file with a ``seg``, ``det`` and ``cls`` section, each an Ultralytics dataset, or
tasks sharing one image list (each image with any of their labels)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import cv2
from PIL import Image
from ultralytics.data.utils import IMG_FORMATS, img2label_paths
from ultralytics.nn.autobackend import check_class_names
from ultralytics.utils import YAML
from ultralytics.utils.patches import PIL_FALLBACK_SUFFIXES

from yolo_unified.common import TASKS
from yolo_unified.files import save_atomically

SPLITS = ("train", "val", "test")
DATA_KEYS = ("path", *SPLITS, *TASKS)  # the keys training reads; any other top-level key is provenance


def check_sections(file: Path, d: dict[str, Any]) -> None:
    """Raise a ValueError, suggesting the key meant, for a top-level key that looks like a misspelt `DATA_KEYS` one."""
    for key, value in d.items():
        if key in DATA_KEYS:
            continue
        close = get_close_matches(str(key), DATA_KEYS, n=1, cutoff=0.75)
        section = isinstance(value, dict) and any(k in value for k in ("names", *SPLITS))
        if close or section:
            hint = f"did you mean '{close[0]}'?" if close else f"task sections are {', '.join(TASKS)}"
            raise ValueError(f"{file}: unknown key '{key}:' ({hint}); the keys read are {', '.join(DATA_KEYS)}")


def load_data_config(data: str | Path) -> dict[str, Any]:
    """Read a multi-task data YAML: ``{"yaml_file", "path", "shared", "tasks": {task: section}}``, paths resolved
    (``path`` against the YAML's folder, splits against ``path``). A ``det`` or ``seg`` section without splits of its
    own reads the top-level ones (``shared``) and is marked ``shared: True``."""
    file = Path(data)
    if not file.is_file():
        raise FileNotFoundError(f"data YAML '{data}' not found")
    try:
        d = YAML.load(file) or {}
    except Exception as e:  # yaml's parser errors, or bytes that are not text
        raise ValueError(f"{file}: not a readable YAML file ({str(e).splitlines()[0]})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{file}: not a data YAML (a mapping of keys such as path, {', '.join(TASKS)})")
    check_sections(file, d)
    root = Path(d.get("path") or ".")
    root = root if root.is_absolute() else (file.parent / root).resolve()

    def resolve(split_path: str) -> str:
        """A split's path, relative to the dataset root unless absolute."""
        p = Path(split_path)
        return str(p if p.is_absolute() else root / p)

    sections = {t: d[t] for t in TASKS if isinstance(d.get(t), dict)}
    if not sections:
        raise ValueError(f"{file}: no task section found; a yolo-unified data YAML has 'seg:', 'det:' and/or 'cls:'")
    shared = {split: resolve(d[split]) for split in SPLITS if d.get(split)}
    tasks = {}
    for task, section in sections.items():
        if not section.get("names"):
            raise ValueError(f"{file}: section '{task}:' has no 'names:'")
        resolved = {k: v for k, v in section.items() if k not in SPLITS}
        resolved["names"] = check_class_names(section["names"])
        own = {split: resolve(section[split]) for split in SPLITS if section.get(split)}
        if not own and shared and task == "cls":
            raise ValueError(
                f"{file}: 'cls:' has no train:/val: of its own; classification reads one folder per class, so it "
                "cannot use the shared images (give it its own splits)"
            )
        resolved.update(own or {**shared, "shared": True})
        tasks[task] = resolved
    return {"yaml_file": str(file.resolve()), "path": root, "shared": shared, "tasks": tasks}


def image_files(source: str | Path) -> list[Path]:
    """The images of a split, sorted: a folder (recursively) or a text file listing them, as Ultralytics reads them."""
    source = Path(source)
    if source.is_dir():
        files = source.rglob("*")
    else:
        lines = [x.strip() for x in source.read_text(encoding="utf-8-sig").splitlines() if x.strip()]
        files = (source.parent / x[2:] if x.startswith("./") else Path(x) for x in lines)
    return sorted(f for f in files if f.suffix[1:].lower() in IMG_FORMATS)


def not_an_image(file: Path) -> str:
    """Why the image file `file` cannot be read (empty, or no decoder knows its first bytes); empty when it can be
    (Ultralytics would skip it, or ask for a HEIF plugin)."""
    if not file.is_file():
        return ""  # a missing file is reported by Ultralytics' loaders
    if file.stat().st_size == 0:
        return "is an empty file, not an image"
    if file.suffix.lower() not in PIL_FALLBACK_SUFFIXES and not cv2.haveImageReader(str(file)):
        return "is not an image (no image decoder reads its contents)"
    return ""


def image_size(file: Path) -> tuple[int, int]:
    """The (width, height) of an image that decodes completely; a ValueError says why not (without the file's name)."""
    if why := not_an_image(file):
        raise ValueError(why)
    try:
        with Image.open(file) as im:
            im.load()  # a truncated file fails here: opening only reads the header
            return im.size
    except Exception as e:  # PIL raises many types for unreadable files
        raise ValueError(f"unreadable image ({type(e).__name__}: {e})") from e


def check_images(files: Iterable[Path]) -> None:
    """Raise a ValueError naming each of `files` that is empty or not an image (`not_an_image`)."""
    if bad := [f"{file} {why}" for file in files if (why := not_an_image(file))]:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{'; '.join(bad[:5])}{more} (remove or replace {'them' if len(bad) > 1 else 'it'})")


def task_data(cfg: dict[str, Any], task: str, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """The Ultralytics dataset dict of one task, its `splits` checked (they exist, their files are images); a task on
    shared images gets the list of the images that have its label."""
    if task not in cfg["tasks"]:
        raise KeyError(f"{cfg['yaml_file']} has no '{task}:' section (it has {sorted(cfg['tasks'])})")
    data = dict(cfg["tasks"][task])
    for split in splits:
        if not data.get(split):
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}:' has no '{split}:' split")
        if not Path(data[split]).exists():
            raise FileNotFoundError(f"{cfg['yaml_file']}: '{task}' {split} split not found at {data[split]}")
        images = image_files(data[split])
        check_images(images)
        if data.get("shared"):
            data[split] = str(write_image_list(cfg, split, [task], labelled_images(cfg, split, images)[task]))
    data.update(path=str(cfg["path"]), nc=len(data["names"]), channels=3, yaml_file=cfg["yaml_file"])
    return data


def val_fingerprint(cfg: dict[str, Any], task: str) -> str:
    """A short hash of `task`'s val split: its images' folder/name and size, and its label files' bytes (the folder
    of a classification image is its class), so that a changed or relabelled val set is told apart from a moved one."""
    section = cfg["tasks"][task]  # read as it is: no image decoded, no image list written
    digest = hashlib.sha256()
    for image in sorted(image_files(section["val"])):
        digest.update(f"{image.parent.name}/{image.name}:{image.stat().st_size};".encode())
        if task != "cls":
            label = label_file(image, task, section)
            digest.update(label.read_bytes() if label.is_file() else b"-")
    return digest.hexdigest()[:16]


def label_file(image: str | Path, task: str, section: dict[str, Any]) -> Path:
    """Where the `task` label of a shared `image` is (``labels/``, ``<masks_dir>/``), as Ultralytics finds it."""
    label_dir, suffix = ("labels", ".txt") if task == "det" else (section.get("masks_dir", "masks"), ".png")
    return Path(img2label_paths([image], label_dir=label_dir, suffix=suffix)[0])


def labelled_images(cfg: dict[str, Any], split: str, images: list[Path] | None = None) -> dict[str, list[Path]]:
    """For each task on the shared images, the images of `split` that have its label (a missing one is a partial
    label); a label without its image, or a task without any labelled image, is a ValueError."""
    shared = {t: s for t, s in cfg["tasks"].items() if s.get("shared")}
    images = image_files(cfg["shared"][split]) if images is None else images
    labelled = {}
    for task, section in shared.items():
        labels = {label_file(f, task, section): f for f in images}
        folders = {f.parent for f in labels}
        if orphans := sorted(f for d in folders for f in d.glob(f"*{next(iter(labels)).suffix}") if f not in labels):
            more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
            raise ValueError(f"{orphans[0]}{more}: a '{task}' label without its image in {cfg['shared'][split]}")
        labelled[task] = [image for label, image in labels.items() if label.is_file()]
        if not labelled[task]:
            where = f"{sorted(folders)[0]}" if folders else cfg["shared"][split]
            raise ValueError(
                f"{cfg['yaml_file']}: '{task}:' has no labelled image in the shared {split} images (no label file in "
                f"{where}); remove the section or add its labels"
            )
    return labelled


def write_image_list(cfg: dict[str, Any], split: str, tasks: list[str], images: list[Path]) -> Path:
    """Write `images` as the image list ``<root>/<split>-<tasks>.txt`` (only when it changes); return its path."""
    file = Path(cfg["path"]) / f"{split}-{'-'.join(tasks)}.txt"
    text = "".join(f"{os.path.abspath(f)}\n" for f in images)  # links kept: their labels sit beside the link
    if not file.is_file() or file.read_text() != text:
        save_atomically(text, file)
    return file


def is_image_list(relative: Path) -> bool:
    """Whether `relative` (a path inside a dataset root) is one of the image lists `write_image_list` writes."""
    return len(relative.parts) == 1 and relative.suffix == ".txt" and relative.stem.split("-")[0] in SPLITS


def derived_file(relative: Path) -> bool:
    """Whether `relative` (inside a dataset root) is derived: Ultralytics' label caches, yolo-unified's image lists."""
    return relative.suffix == ".cache" or is_image_list(relative)


def task_names(cfg: dict[str, Any]) -> dict[str, dict[int, str]]:
    """Class names of every task the data YAML describes."""
    return {task: section["names"] for task, section in cfg["tasks"].items()}


def check_heads(model_names: dict[str, dict], data_names: dict[str, dict], model: Any, data: Any) -> None:
    """Raise a ValueError naming `model` and `data` when a task's class count differs between the model's heads and
    the data (a task the model lacks has 0)."""
    if bad := [t for t in data_names if len(model_names.get(t, ())) != len(data_names[t])]:
        counts = ", ".join(f"{t} {len(model_names.get(t, ()))} vs {len(data_names[t])}" for t in bad)
        raise ValueError(
            f"model={model}: its heads do not match the class counts of {data} ({counts}; model vs data); use the "
            "data the model was trained on, or train on this data from the model's other weights with pretrained="
        )
