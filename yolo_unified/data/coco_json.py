"""Read and check COCO instances JSONs and find their images, for `yolo_unified.data.coco`. Source layouts:
``src/labels.json`` with split folders ``src/<split>/`` beside it; ``src/<split>/labels.json``; or COCO's own
``src/annotations/instances_<split>.json`` with ``src/<split>/``. Splits are train, val or test (``train2017`` too)."""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.utils import LOGGER

from yolo_unified.files import few, read_json

JSON_NAME = "labels.json"
SPLIT_NAMES = ("train", "val", "test")


class Instance(NamedTuple):
    """One checked COCO annotation."""

    id: Any
    category_id: int
    crowd: bool
    bbox: list[float]
    segmentation: list[list[float]] | dict  # polygons of 3 or more points, or an RLE


@dataclass
class CocoFile:
    """One read and checked COCO instances JSON, with its images found on disk."""

    path: Path
    folders: dict[str, Path]  # split -> image folder
    categories: dict[int, str]  # COCO category id -> name
    images: list[tuple[str, Path, dict]]  # (split, file, image entry)
    instances: dict[Any, list[Instance]]  # image id -> its annotations
    unlisted: dict[str, int]  # split -> images on disk that the JSON does not list


def _split_name(folder: Path) -> str:
    """The split an image folder holds: its name, a trailing year dropped (``train2017`` -> ``train``)."""
    split = folder.name.rstrip("0123456789")
    if split not in SPLIT_NAMES:
        raise ValueError(f"{folder}: a split folder is named {', '.join(SPLIT_NAMES)} (a year may follow: train2017)")
    return split


def _image_names(folder: Path) -> set[str]:
    """The names of the image files in `folder`."""
    return {f.name for f in folder.iterdir() if f.is_file() and f.suffix[1:].lower() in IMG_FORMATS}


def annotation_files(src: Path) -> dict[Path, dict[str, Path]]:
    """Each COCO JSON of `src` with the image folder of every split it covers (layouts: module docstring)."""
    if (src / JSON_NAME).is_file():
        folders = [d for d in sorted(src.iterdir()) if d.is_dir() and _image_names(d)]
        found = {src / JSON_NAME: folders}
    else:
        found = {d / JSON_NAME: [d] for d in sorted(src.iterdir()) if (d / JSON_NAME).is_file()}
        for file in sorted((src / "annotations").glob("instances_*.json")):
            found[file] = [src / file.stem.removeprefix("instances_")]
    if not found:
        raise FileNotFoundError(
            f"no COCO JSON in {src}: expected {JSON_NAME} with split folders beside it, <split>/{JSON_NAME}, or "
            "annotations/instances_<split>.json"
        )
    for file, folders in found.items():
        if missing := [str(d) for d in folders if not d.is_dir()]:
            raise FileNotFoundError(f"{file}: its image folder {missing[0]} does not exist")
        if not folders:
            raise FileNotFoundError(f"{file}: no split folder with images beside it in {src}")
    named = [(file, _split_name(d), d) for file, folders in found.items() for d in folders]
    if len({split for _, split, _ in named}) < len(named):
        raise ValueError(f"{src}: several folders hold one split ({', '.join(d.name for *_, d in named)}); keep one")
    return {file: {split: d for f, split, d in named if f == file} for file in found}


def _load(file: Path) -> dict[str, list]:
    """The JSON's contents, checked to be a COCO instances file (lists of images, annotations and categories)."""
    data = read_json(file)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{file}: not a COCO instances JSON (it needs 'images', 'annotations' and 'categories' lists)")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise ValueError(f"{file}: no 'categories' list; the class names come from it")
    return data


def _categories(file: Path, entries: list) -> dict[int, str]:
    """COCO category id -> name. The mini_coco quirk (the whole category dict in ``name``) is read with a warning;
    anything else malformed raises a ValueError naming `file`."""
    categories: dict[int, str] = {}
    nested = 0
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), dict):
            entry, nested = entry["name"], nested + 1
        cid, name = (entry.get("id"), entry.get("name")) if isinstance(entry, dict) else (None, None)
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name.strip():
            raise ValueError(f"{file}: category {entry!r} has no integer 'id' and non-empty 'name'")
        if categories.setdefault(cid, name) != name:
            raise ValueError(f"{file}: category id {cid} is both '{categories[cid]}' and '{name}'")
    ids_of = defaultdict(list)
    for cid, name in categories.items():
        ids_of[name].append(cid)
    if twice := {name: ids for name, ids in ids_of.items() if len(ids) > 1}:
        raise ValueError(f"{file}: category name(s) with several ids: {twice}; a class name must be unique")
    if nested:
        LOGGER.warning(
            f"{file}: {nested} of {len(entries)} categories hold the whole category dict in 'name' (a known quirk): "
            "read the real id and name from it, the outer 'id' ignored"
        )
    return categories


def _finite(values: Any) -> bool:
    """Whether `values` is a list of finite numbers."""
    if not isinstance(values, list):
        return False
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):  # text, None or nested lists among the values
        return False
    return array.ndim == 1 and bool(np.isfinite(array).all())


def _instance(file: Path, ann: dict) -> Instance:
    """The checked annotation `ann`: a 4-number bbox and a non-empty segmentation (polygons of fewer than 3 points,
    which have no area, dropped); a ValueError names `file` and the annotation otherwise."""
    where = f"{file}: annotation {ann.get('id')!r}"
    bbox, segmentation = ann.get("bbox"), ann.get("segmentation")
    if not _finite(bbox) or len(bbox) != 4:
        raise ValueError(f"{where} has no usable bbox [x, y, w, h] (it has {bbox!r})")
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(segmentation.get("counts"), str | list) or not _finite(size) or len(size) != 2:
            raise ValueError(f"{where}: its RLE segmentation needs 'counts' and 'size' [height, width]")
    elif isinstance(segmentation, list | type(None)):
        polygons = segmentation or []
        if not all(_finite(p) and len(p) % 2 == 0 for p in polygons):
            raise ValueError(f"{where}: its segmentation is not a list of polygons [x1, y1, x2, y2, ...]")
        segmentation = [p for p in polygons if len(p) >= 6]
        if not segmentation:
            raise ValueError(f"{where} has an empty segmentation (no polygon of 3 or more points): no mask to paint")
    else:
        raise ValueError(f"{where}: its segmentation is neither polygons nor an RLE dict")
    return Instance(ann.get("id"), ann.get("category_id"), bool(ann.get("iscrowd")), bbox, segmentation)


def _find_images(file: Path, images: list, folders: dict[str, Path]) -> tuple[list, dict[str, int]]:
    """Each image entry of `file` as (split, file on disk, entry), and per split the images on disk it does not list.

    An image is looked for by name in every split folder (only in the one its ``file_name`` names, if any); raises
    for a malformed entry, an image found in several splits, two of a split with one stem, and missing images."""
    on_disk = {split: _image_names(folder) for split, folder in folders.items()}
    found, missing, stems = [], [], set()
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            raise ValueError(f"{file}: image entry {image!r} has no 'id' and 'file_name'")
        name = Path(image["file_name"])
        splits = [s for s, d in folders.items() if name.name in on_disk[s] and name.parent.name in ("", d.name)]
        if len(splits) > 1:
            raise ValueError(f"{file}: {name.name} is in the folders of {splits}; give its folder in file_name")
        if not splits:
            missing.append(image["file_name"])
            continue
        if (splits[0], name.stem) in stems:
            raise ValueError(f"{file}: two {splits[0]} images named {name.stem} (their labels would share a file)")
        stems.add((splits[0], name.stem))
        found.append((splits[0], folders[splits[0]] / name.name, image))
    if missing:
        where = ", ".join(str(d) for d in folders.values())
        raise FileNotFoundError(f"{file}: {len(missing)} listed image(s) not found in {where}: {few(missing)}")
    listed = Counter(split for split, _, _ in found)
    return found, {split: len(names) - listed[split] for split, names in on_disk.items()}


def read_coco(file: Path, folders: dict[str, Path]) -> CocoFile:
    """Read and check one COCO instances JSON: categories, images (all found on disk) and annotations."""
    data = _load(file)
    categories = _categories(file, data["categories"])
    images, unlisted = _find_images(file, data["images"], folders)
    ids = Counter(entry["id"] for _, _, entry in images)
    if repeated := [i for i, n in ids.items() if n > 1]:
        raise ValueError(f"{file}: image ids repeat: {few(repeated)}")
    instances = defaultdict(list)
    unknown_category, unknown_image = Counter(), Counter()
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"{file}: annotation {ann!r} is not a dict")
        if ann.get("category_id") not in categories:
            unknown_category[ann.get("category_id")] += 1
        elif ann.get("image_id") not in ids:
            unknown_image[ann.get("image_id")] += 1
        else:
            instances[ann["image_id"]].append(_instance(file, ann))
    if unknown_category:
        raise ValueError(
            f"{file}: {unknown_category.total()} annotation(s) have a category_id that is not among its "
            f"{len(categories)} categories: {few(sorted(unknown_category, key=str))}; the class of those is unknown"
        )
    if unknown_image:
        raise ValueError(f"{file}: annotations of image id(s) it does not list: {few(sorted(unknown_image, key=str))}")
    return CocoFile(file, folders, categories, images, dict(instances), unlisted)


def class_names(names: list[str] | None, files: list[CocoFile]) -> dict[str, str]:
    """The chosen classes, class name -> COCO category name: `names` checked against the JSONs' categories (an entry
    ``"name:category"`` renames a category, e.g. ``"aeroplane:airplane"``), or all categories by COCO id."""
    where = ", ".join(str(f.path) for f in files)
    if names is None:
        if any(f.categories != files[0].categories for f in files[1:]):
            raise ValueError(f"{where}: the files' categories differ; choose the classes by name with names=")
        return {name: name for name in (files[0].categories[cid] for cid in sorted(files[0].categories))}
    if isinstance(names, str):
        raise TypeError(f"names= is a list of category names, not the string '{names}'")
    pairs = [(name.partition(":")[0].strip(), name.partition(":")[2].strip() or name.strip()) for name in names]
    for position in (0, 1):
        chosen = [pair[position] for pair in pairs]
        if repeated := [n for n, count in Counter(chosen).items() if count > 1]:
            raise ValueError(f"names= repeats {'class' if position == 0 else 'category'} {repeated}")
    if "background" in (classes := dict(pairs)):
        raise ValueError("names= has 'background', the name of the masks' class 0; leave it out")
    known = sorted({name for f in files for name in f.categories.values()})
    if unknown := [n for n in classes.values() if n not in known]:
        hints = [f"'{n}' (close: {', '.join(difflib.get_close_matches(n, known, n=3)) or 'none'})" for n in unknown]
        raise ValueError(f"{where}: no category named {'; '.join(hints)}")
    return classes
