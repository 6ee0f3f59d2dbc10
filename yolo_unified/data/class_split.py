"""A class subset of one task of a multi-task dataset, for class-incremental stages: the images holding a chosen
class, labelled with the chosen classes only (segmentation: the others become background, as in VOC 15+5), as a
one-task dataset in `LAYOUT` with its data YAML."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ultralytics.data.utils import read_mask
from ultralytics.utils import LOGGER, TQDM, YAML

from yolo_unified.data.config import SPLITS, derived_file, image_files, label_file, load_data_config, task_data
from yolo_unified.data.layout import IGNORE, LAYOUT, YAML_HEADER, check_own_yaml, publish_yaml, write_data_yaml
from yolo_unified.files import OutputFolder

UNITS = {"det": "boxes", "seg": "pixels", "cls": "images"}  # task -> what its summary counts per class
Keep = Callable[[Path, Path], Counter]  # (source image, its place in the subset) -> kept count per class; {}: left out


def _split_folder(task: str, split: str) -> str:
    """The image folder of `split` in the subset, relative to its root, as `LAYOUT` names it (``det/images/val``)."""
    return (Path(LAYOUT[task]["train"]).parent / split).as_posix()


def _class_ids(cfg: dict[str, Any], task: str, classes: list[str]) -> list[int]:
    """The data's ids of `classes` (class names of `task`), in their order; a ValueError naming the data file for
    unknown or repeated names, none, or segmentation's background."""
    names = cfg["tasks"][task]["names"]
    ids = {name: i for i, name in names.items()}
    where = f"{cfg['yaml_file']}: '{task}:'"
    if unknown := [c for c in classes if c not in ids]:
        raise ValueError(f"{where} has no class named {unknown}; its classes are {list(names.values())}")
    if repeated := sorted({c for c in classes if classes.count(c) > 1}):
        raise ValueError(f"{where}: classes= repeats {repeated}")
    if not classes:
        raise ValueError(f"{where}: no classes chosen")
    if task == "seg" and names[0] in classes:
        raise ValueError(f"{where}: '{names[0]}' is class 0, which every subset keeps as background; leave it out")
    return [ids[c] for c in classes]


def _check_dst(cfg: dict[str, Any], section: dict[str, Any], splits: Iterable[str], dst: Path, yaml_path: Path) -> None:
    """Raise a ValueError when `dst` overlaps the source data (the subset links to it) or `yaml_path` is the source's
    data YAML or a file yolo-unified did not write."""
    target = dst.resolve()
    sources = [Path(section[split]).resolve() for split in splits] + [Path(p) for p in cfg["shared"].values()]
    if Path(cfg["path"]).is_relative_to(target) or any(
        target.is_relative_to(p) or p.is_relative_to(target) for p in sources
    ):
        raise ValueError(f"dst {dst} overlaps the data of {cfg['yaml_file']}; choose a folder outside it")
    if yaml_path.resolve() == Path(cfg["yaml_file"]):
        raise ValueError(f"yaml={yaml_path} is the source data YAML; choose another file")
    check_own_yaml(yaml_path)


def _link(image: Path, out: Path) -> None:
    """Symlink `image` at `out` (an absolute link); copy it with its timestamps where linking fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(image.resolve(), out)
    except OSError:
        shutil.copy2(image, out)


def _det_keep(section: dict[str, Any], ids: list[int], names: list[str]) -> Keep:
    """Keep an image's boxes of the chosen classes `ids`, renumbered in their order."""
    new_id = {old: new for new, old in enumerate(ids)}

    def keep(image: Path, out: Path) -> Counter:
        source, lines, kept = label_file(image, "det", section), [], Counter()
        for n, line in enumerate(source.read_text().splitlines() if source.is_file() else [], 1):
            if not (parts := line.split(maxsplit=1)):
                continue
            try:
                cls = int(float(parts[0]))
            except ValueError as e:
                raise ValueError(f"{source}, line {n}: '{line}' does not start with a class id") from e
            if cls in new_id:
                lines.append(" ".join([str(new_id[cls]), *parts[1:]]) + "\n")
                kept[names[new_id[cls]]] += 1
        if lines:
            label = label_file(out, "det", LAYOUT["det"])
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(lines))
        return kept

    return keep


def read_class_mask(file: Path) -> np.ndarray:
    """A mask's class ids as Ultralytics reads them (palette indices, 16-bit ids, 1-bit foreground)."""
    with Image.open(file) as im:
        mode = im.mode
    return read_mask(str(file), mode)


def _seg_keep(section: dict[str, Any], ids: list[int], names: list[str]) -> Keep:
    """Keep an image holding a chosen class, its mask's `ids` renumbered 1, 2, ..., other classes 0, 255 kept."""
    if section.get("label_mapping"):
        raise ValueError("a 'seg:' section with label_mapping is not supported: give its masks in training ids")
    lut = np.zeros(1 << 16, np.uint8)  # raw id -> subset id; 16 bits, as Ultralytics reads 16-bit masks too
    lut[IGNORE] = IGNORE
    lut[ids] = np.arange(1, len(ids) + 1)

    def keep(image: Path, out: Path) -> Counter:
        source = label_file(image, "seg", section)
        if not source.is_file():
            return Counter()  # no mask: Ultralytics leaves the image out
        mask = lut[read_class_mask(source)]
        pixels = np.bincount(mask.ravel(), minlength=len(names))[1 : len(names)]
        if pixels.any():
            file = label_file(out, "seg", LAYOUT["seg"])
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(file)
        return Counter({name: int(n) for name, n in zip(names[1:], pixels, strict=True) if n})

    return keep


def _cls_keep(folder: Path, ids: list[int], names: dict[int, str], where: str) -> Keep:
    """Keep the images of the class folders of `ids` (numbered by sorted folder name, as Ultralytics does)."""
    folders = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(folders) != len(names):
        raise ValueError(f"{where}: {folder} has {len(folders)} class folders for {len(names)} names")
    chosen = {folders[i]: names[i] for i in ids}

    def keep(image: Path, out: Path) -> Counter:
        parts = image.relative_to(folder).parts
        return Counter({chosen[parts[0]]: 1}) if len(parts) > 1 and parts[0] in chosen else Counter()

    return keep


def _write_split(
    task: str, split: str, source: str, out_dir: Path, keep: Keep, where: str, classes: list[str]
) -> tuple[int, int, Counter]:
    """Write the images of `split` that `keep` keeps, with their labels, into `out_dir`; return the kept and source
    image counts and the kept count per class. No image kept, or two sharing a label file, is a ValueError."""
    images, kept, counts, placed = image_files(source), 0, Counter(), {}
    for image in TQDM(images, desc=f"{task} {split}"):
        out = out_dir / (image.relative_to(source) if task == "cls" else image.name)
        if found := keep(image, out):
            if task != "cls" and (other := placed.setdefault(out.stem, image)) != image:
                raise ValueError(f"{where}: {split} images {other} and {image} share the name {out.stem}")
            _link(image, out)
            kept, counts = kept + 1, counts + found
    if not kept:
        raise ValueError(f"{where}: no {split} image holds any of {classes}; choose classes the {split} split has")
    return kept, len(images), counts


def _subset_names(task: str, names: dict[int, str], ids: list[int]) -> list[str]:
    """The subset's class names: the chosen ones in order (det), after the background (seg), in folder order (cls)."""
    if task == "seg":
        return [names[0], *(names[i] for i in ids)]
    return [names[i] for i in (sorted(ids) if task == "cls" else ids)]


def _write_yaml(yaml_path: Path, dst: Path, task: str, names: list[str], splits: list[str], extra: dict) -> None:
    """Write the subset's data YAML (`write_data_yaml`, other splits than train and val added in the same layout)."""

    def write(draft: Path) -> None:
        """The YAML of the subset, into `draft`."""
        write_data_yaml(draft, dst, {task: names}, extra=extra)
        if set(splits) != set(LAYOUT[task]) & set(SPLITS):
            d = YAML.load(draft)
            others = {k: v for k, v in d[task].items() if k not in SPLITS}
            d[task] = {**{split: _split_folder(task, split) for split in splits}, **others}
            YAML.save(draft, d, header=YAML_HEADER)

    publish_yaml(yaml_path, write)


def split_classes(
    data: str | Path,
    task: str,
    classes: list[str],
    dst: str | Path,
    yaml_path: str | Path | None = None,
    splits: Iterable[str] = ("train", "val"),
) -> Path:
    """Write the subset of the `task` data of `data` holding only `classes` into `dst` (an `OutputFolder`), with its
    data YAML (default ``dst.parent / f"{dst.name}.yaml"``); return the YAML's path.

    Images are symlinked (copied where a link fails). det: the boxes of `classes`, ids in their order; seg: masks with
    0 background (every other class), 1.. `classes`, 255 ignore; cls: the class folders of `classes`.
    """
    dst, splits = Path(dst), list(dict.fromkeys(splits))
    yaml_path = Path(yaml_path) if yaml_path else dst.parent / f"{dst.name}.yaml"
    if isinstance(classes, str):
        raise TypeError(f"classes= is a list of class names, not the string '{classes}'")
    if not splits:
        raise ValueError("splits= names no split to write")
    cfg = load_data_config(data)
    section = task_data(cfg, task, tuple(splits))
    classes = list(classes)
    ids = _class_ids(cfg, task, classes)
    _check_dst(cfg, section, splits, dst, yaml_path)
    where, names = cfg["yaml_file"], section["names"]
    with OutputFolder(dst, "yolo-unified data split", derived=derived_file) as build:
        for split in splits:
            if task == "cls":
                keep = _cls_keep(Path(section[split]), ids, names, where)
            else:
                keep = (_det_keep if task == "det" else _seg_keep)(section, ids, _subset_names(task, names, ids))
            out_dir = build / _split_folder(task, split)
            kept, total, counts = _write_split(task, split, section[split], out_dir, keep, where, classes)
            if (absent := [c for c in classes if not counts[c]]) and task == "cls":
                raise ValueError(f"{where}: the class folder(s) of {absent} hold no {split} image")
            if absent:
                LOGGER.warning(f"{task} {split}: no {UNITS[task]} of {absent} in the {split} images kept")
            per_class = ", ".join(f"{name} {counts[name]}" for name in classes)
            LOGGER.info(f"{task} {split}: {kept}/{total} images kept, {UNITS[task]} kept: {per_class}")
    provenance = {"source": str(data), "task": task, "classes": classes}
    _write_yaml(yaml_path, dst, task, _subset_names(task, names, ids), splits, provenance)
    LOGGER.info(f"{dst}: the {task} subset of {classes} written, its data YAML {yaml_path}")
    return yaml_path
