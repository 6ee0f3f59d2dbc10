"""Convert COCO instance annotations into the shared-images multi-task layout: one image folder per split, and for
every image a YOLO box label (det) and a semantic class-id mask (seg) of the chosen categories.

Supported source layouts:

- ``src/labels.json`` covering the images of the split folders ``src/<split>/``; an image's split is the folder
  that holds it (../shared/data/mini_coco);
- one JSON per split: ``src/<split>/labels.json`` with the split's images beside it, or COCO's own
  ``src/annotations/instances_<split>.json`` with the images in ``src/<split>/``.

Split folders are named train, val or test, a year may follow (``train2017`` becomes ``train``).
"""

from __future__ import annotations

import difflib
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.utils import LOGGER, TQDM

from yolo_unified.data.config import derived_file, image_size
from yolo_unified.data.prepare import IGNORE, check_own_yaml, publish_yaml, write_data_yaml, yolo_box
from yolo_unified.files import OutputFolder, read_json

JSON_NAME = "labels.json"
SPLIT_NAMES = ("train", "val", "test")
OTHERS = {"background": 0, "ignore": IGNORE}  # others= -> mask value of the categories left out
OUTPUT_DIRS = ("images", "labels", "masks")
CONVERTED_BY = "yolo-unified data coco"


class _Instance(NamedTuple):
    """One checked COCO annotation."""

    id: Any
    category_id: int
    crowd: bool
    bbox: list[float]
    segmentation: list[list[float]] | dict  # polygons of 3 or more points, or an RLE


@dataclass
class _CocoFile:
    """One read and checked COCO instances JSON, with its images found on disk."""

    path: Path
    folders: dict[str, Path]  # split -> image folder
    categories: dict[int, str]  # COCO category id -> name
    images: list[tuple[str, Path, dict]]  # (split, file, image entry)
    instances: dict[Any, list[_Instance]]  # image id -> its annotations
    unlisted: dict[str, int]  # split -> images on disk that the JSON does not list


def _few(items: list, shown: int = 5) -> str:
    """The first `shown` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(str(item) for item in items[:shown]) + more


def _split_name(folder: Path) -> str:
    """The split an image folder holds: its name, a trailing year dropped (``train2017`` -> ``train``)."""
    split = folder.name.rstrip("0123456789")
    if split not in SPLIT_NAMES:
        raise ValueError(f"{folder}: a split folder is named {', '.join(SPLIT_NAMES)} (a year may follow: train2017)")
    return split


def _image_names(folder: Path) -> set[str]:
    """The names of the image files in `folder`."""
    return {f.name for f in folder.iterdir() if f.is_file() and f.suffix[1:].lower() in IMG_FORMATS}


def _annotation_files(src: Path) -> dict[Path, dict[str, Path]]:
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


def _instance(file: Path, ann: dict) -> _Instance:
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
    return _Instance(ann.get("id"), ann.get("category_id"), bool(ann.get("iscrowd")), bbox, segmentation)


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
        raise FileNotFoundError(f"{file}: {len(missing)} listed image(s) not found in {where}: {_few(missing)}")
    listed = Counter(split for split, _, _ in found)
    return found, {split: len(names) - listed[split] for split, names in on_disk.items()}


def _read_coco(file: Path, folders: dict[str, Path]) -> _CocoFile:
    """Read and check one COCO instances JSON: categories, images (all found on disk) and annotations."""
    data = _load(file)
    categories = _categories(file, data["categories"])
    images, unlisted = _find_images(file, data["images"], folders)
    ids = Counter(entry["id"] for _, _, entry in images)
    if repeated := [i for i, n in ids.items() if n > 1]:
        raise ValueError(f"{file}: image ids repeat: {_few(repeated)}")
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
            f"{len(categories)} categories: {_few(sorted(unknown_category, key=str))}; the class of those is unknown"
        )
    if unknown_image:
        raise ValueError(f"{file}: annotations of image id(s) it does not list: {_few(sorted(unknown_image, key=str))}")
    return _CocoFile(file, folders, categories, images, dict(instances), unlisted)


def _class_names(names: list[str] | None, files: list[_CocoFile]) -> dict[str, str]:
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


def _new_stats(names: list[str]) -> dict[str, Any]:
    """The zeroed counts of one split (the summary's per-split entry)."""
    return {
        "images": 0,
        "images_without_annotation": 0,
        "unlisted_images": 0,  # on disk, not in the JSON: left out
        "boxes": dict.fromkeys(names, 0),
        "crowd_boxes_dropped": dict.fromkeys(names, 0),
        "empty_boxes_dropped": 0,  # zero area once clipped to the image
        "left_out_annotations": 0,  # of categories not among names
        "polygons_clipped": 0,  # polygons with points outside the image
        "mask_pixels": dict.fromkeys(["background", *names, "ignore"], 0),
    }


def _rle(instance: _Instance, width: int, height: int, file: Path) -> tuple[dict, int]:
    """The instance's mask as one pycocotools RLE, and how many of its polygons have points outside the image (the
    rasteriser keeps their part inside it); `file` is its JSON, named in errors."""
    segmentation = instance.segmentation
    if isinstance(segmentation, list):
        clipped = sum(
            min(p[0::2]) < 0 or max(p[0::2]) > width or min(p[1::2]) < 0 or max(p[1::2]) > height for p in segmentation
        )
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)), clipped
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(
            f"{file}: annotation {instance.id!r}: RLE size {segmentation['size']} is not [{height}, {width}]"
        )
    if isinstance(segmentation["counts"], list):  # uncompressed
        return mask_utils.frPyObjects(segmentation, height, width), 0
    return segmentation, 0


def _convert_image(
    coco: _CocoFile, file: Path, image: dict, det_class: dict[int, int | None], others: int, stats: dict
) -> tuple[str, np.ndarray]:
    """The YOLO label text and the class-id mask of one image, its counts added to `stats` (its split's)."""
    try:
        width, height = image_size(file)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e
    if (image.get("width", width), image.get("height", height)) != (width, height):
        raise ValueError(
            f"{file}: image is {width}x{height} px but {coco.path} says {image.get('width')}x{image.get('height')}"
        )
    names = list(stats["boxes"])
    instances = coco.instances.get(image["id"], [])
    lines, layers = [], []
    for instance in instances:
        cls = det_class[instance.category_id]
        if cls is None:
            stats["left_out_annotations"] += 1
            value = others
        elif instance.crowd:
            stats["crowd_boxes_dropped"][names[cls]] += 1
            value = IGNORE
        else:
            value = cls + 1
            if box := yolo_box(instance.bbox, width, height):
                lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in box) + "\n")
                stats["boxes"][names[cls]] += 1
            else:
                stats["empty_boxes_dropped"] += 1
        rle, clipped = _rle(instance, width, height, coco.path)
        stats["polygons_clipped"] += clipped
        layers.append((float(mask_utils.area(rle)), value, rle))
    mask = np.zeros((height, width), np.uint8)
    for _, value, rle in sorted(layers, key=lambda layer: -layer[0]):  # larger first: smaller ones stay on top
        x, y, w, h = mask_utils.toBbox(rle).astype(int)
        box = np.s_[y : y + h, x : x + w]  # painting only the instance's box is much faster
        np.copyto(mask[box], value, where=mask_utils.decode(rle)[box].view(bool))
    pixels = np.bincount(mask.ravel(), minlength=IGNORE + 1)
    for name, value in zip(stats["mask_pixels"], [*range(len(names) + 1), IGNORE], strict=True):
        stats["mask_pixels"][name] += int(pixels[value])
    stats["images"] += 1
    stats["images_without_annotation"] += not instances
    return "".join(lines), mask


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst`; copy it with its timestamps where linking fails (another file system, or a file
    of another user under Linux's protected_hardlinks)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _convert_file(coco: _CocoFile, classes: dict[str, str], others: int, out: Path, stats: dict[str, dict]) -> None:
    """Write the images, labels and masks of one COCO JSON into `out`, counting into `stats` (split -> counts);
    `classes` maps each class name, in id order, to its category's name."""
    index = {category: i for i, category in enumerate(classes.values())}
    det_class = {cid: index.get(name) for cid, name in coco.categories.items()}
    for split, count in coco.unlisted.items():
        stats[split]["unlisted_images"] += count
    for split, file, image in TQDM(coco.images, desc=f"converting {coco.path.name}"):
        label, mask = _convert_image(coco, file, image, det_class, others, stats[split])
        _link_or_copy(file, out / "images" / split / file.name)
        (out / "labels" / split / f"{file.stem}.txt").write_text(label)
        Image.fromarray(mask).save(out / "masks" / split / f"{file.stem}.png")


def _write_yaml(yaml_path: Path, dst: Path, names: list[str], splits: list[str], provenance: dict) -> None:
    """Write the data YAML (`write_data_yaml`), leaving an identical existing file untouched."""
    names_by_task = {"det": names, "seg": ["background", *names]}
    publish_yaml(
        yaml_path, lambda draft: write_data_yaml(draft, dst, names_by_task, extra=provenance, shared_splits=splits)
    )


def _log_summary(summary: dict) -> None:
    """Log the summary as two tables: counts per split, then boxes, dropped crowd boxes and mask share per class."""
    splits = summary["splits"]
    columns = "".join(f"{split:>8}" for split in splits)
    rows = [f"{'':<24}{columns}"]
    for label, key in (
        ("images", "images"),
        ("without annotation", "images_without_annotation"),
        ("on disk, not in JSON", "unlisted_images"),
        ("empty boxes dropped", "empty_boxes_dropped"),
        ("other-class annotations", "left_out_annotations"),
        ("polygons clipped", "polygons_clipped"),
    ):
        rows.append(f"{label:<24}" + "".join(f"{s[key]:>8}" for s in splits.values()))
    group = len(splits) * 8
    rows.append(f"\n{'':<24}{'boxes':>{group}}{'crowd':>{group}}{'mask %':>{group}}")
    rows.append(f"{'class':<24}{columns * 3}")
    for name in next(iter(splits.values()))["mask_pixels"]:
        counts = [s.get(key, {}).get(name, "-") for key in ("boxes", "crowd_boxes_dropped") for s in splits.values()]
        shares = [100 * s["mask_pixels"][name] / max(sum(s["mask_pixels"].values()), 1) for s in splits.values()]
        rows.append(f"{name:<24}" + "".join(f"{c:>8}" for c in counts) + "".join(f"{p:>8.2f}" for p in shares))
    LOGGER.info(
        f"COCO instances converted into {summary['dst']} ({len(summary['names'])} classes): crowd regions of the "
        f"chosen classes -> {IGNORE} (ignore), other classes -> {summary['others']} ({OTHERS[summary['others']]}), "
        f"crowd boxes dropped\n" + "\n".join(rows)
    )


def convert_coco(
    src: str | Path,
    dst: str | Path,
    names: list[str] | None = None,
    yaml_path: str | Path | None = None,
    others: str = "background",
) -> dict[str, Any]:
    """Convert the COCO instances of `src` (layouts: module docstring) into the shared-images layout at `dst`.

    Writes ``images/<split>/`` (hard links, or copies), ``labels/<split>/<stem>.txt`` (YOLO boxes of the classes
    `names`, det ids in their order; empty for an image without any) and ``masks/<split>/<stem>.png`` (0 background,
    1..N the classes, 255 ignore), then the data YAML (default ``dst.parent / f"{dst.name}.yaml"``). `names` are
    category names, ``"name:category"`` to give a category another name (VOC's ``"aeroplane:airplane"``); None takes
    all categories by COCO id. Crowd boxes are dropped and their regions set to 255;
    annotations of other categories paint 0 (`others="background"`) or 255 (``"ignore"``); larger instances are
    painted first. Bad input raises one error naming the file before `dst` changes. The output is built beside `dst`
    and swapped in whole (`yolo_unified.files.OutputFolder`): a run stopped at any point leaves `dst` as it was or as
    it is after the run, an unchanged `dst` is left untouched, and a `dst` holding files yolo-unified did not write
    (or a `yaml_path` it did not write) is refused before anything is read.

    Returns a summary: ``splits`` (per split: images, images without annotation, images on disk not in the JSON,
    boxes and dropped crowd boxes per class, empty boxes dropped, other-class annotations, clipped polygons, mask
    pixels per class), ``names``, ``categories`` (the renamed ones: name -> category), ``others``, ``annotations``
    (the JSONs), ``dst`` and ``yaml``.
    """
    src, dst = Path(src), Path(dst)
    yaml_path = Path(yaml_path) if yaml_path else dst.parent / f"{dst.name}.yaml"
    if others not in OTHERS:
        raise ValueError(f"others={others!r}: choose {' or '.join(OTHERS)} for the pixels of the other categories")
    if not src.is_dir():
        raise FileNotFoundError(f"COCO source folder {src} not found")
    if dst.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dst.resolve()):
        raise ValueError(f"dst {dst} and src {src} overlap; the source must stay untouched")
    check_own_yaml(yaml_path)
    output = OutputFolder(dst, CONVERTED_BY, derived=derived_file)
    files = [_read_coco(file, folders) for file, folders in _annotation_files(src).items()]
    classes = _class_names(names, files)
    names = list(classes)
    splits = sorted({split for f in files for split in f.folders}, key=SPLIT_NAMES.index)
    stats = {split: _new_stats(names) for split in splits}
    with output as build:
        for name in OUTPUT_DIRS:
            for split in splits:
                (build / name / split).mkdir(parents=True)
        for coco in files:
            _convert_file(coco, classes, OTHERS[others], build, stats)
    LOGGER.info(f"{dst}: {'written' if output.changed else 'up to date, nothing rewritten'}")
    annotations = [str(f.path.relative_to(src)) for f in files]
    renamed = {name: category for name, category in classes.items() if name != category}
    provenance = {"source": str(src), "annotations": annotations, "converted_by": CONVERTED_BY}
    provenance |= {"renamed_categories": renamed} if renamed else {}
    _write_yaml(yaml_path, dst, names, splits, {**provenance, "other_classes": others})
    summary = {
        "dst": str(dst),
        "yaml": str(yaml_path),
        "annotations": annotations,
        "names": names,
        "categories": renamed,
        "others": others,
        "splits": stats,
    }
    _log_summary(summary)
    return summary
