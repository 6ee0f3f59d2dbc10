"""Convert COCO instances (source layouts: `yolo_unified.data.coco_json`) into the shared-images multi-task layout:
one image folder per split, and for every image a YOLO box label (det) and a semantic class-id mask (seg) of the
chosen categories."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from ultralytics.utils import LOGGER, TQDM

from yolo_unified.data.coco_json import SPLIT_NAMES, CocoFile, Instance, annotation_files, class_names, read_coco
from yolo_unified.data.config import derived_file, image_size
from yolo_unified.data.layout import IGNORE, check_own_yaml, publish_yaml, write_data_yaml, yolo_box
from yolo_unified.files import OutputFolder

OTHERS = {"background": 0, "ignore": IGNORE}  # others= -> mask value of the categories left out
OUTPUT_DIRS = ("images", "labels", "masks")
CONVERTED_BY = "yolo-unified data coco"


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


def _rle(instance: Instance, width: int, height: int, file: Path) -> tuple[dict, int]:
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
    coco: CocoFile, file: Path, image: dict, det_class: dict[int, int | None], others: int, stats: dict
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
    """Hard-link `src` at `dst`; copy it with its timestamps where linking fails."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _convert_file(coco: CocoFile, classes: dict[str, str], others: int, out: Path, stats: dict[str, dict]) -> None:
    """Write one COCO JSON's images, labels and masks into `out`, counting into `stats` (split -> counts)."""
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
    """Convert the COCO instances of `src` (layouts: `coco_json`) into the shared-images layout at `dst` (an
    `OutputFolder`) and write its data YAML (default ``dst.parent / f"{dst.name}.yaml"``).

    Writes ``images/<split>/`` (hard links, or copies), ``labels/<split>/<stem>.txt`` (YOLO boxes of `names`) and
    ``masks/<split>/<stem>.png`` (0 background, 1..N the classes, 255 ignore). `names` are category names
    (``"name:category"`` renames one, VOC's ``"aeroplane:airplane"``), None for all by COCO id. Crowd boxes are dropped
    (their regions 255), other categories paint `others` (0 or 255), larger instances first. Bad input raises one error
    naming the file before `dst` changes. Returns the summary (per split counts, names, renamed categories, paths)."""
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
    files = [read_coco(file, folders) for file, folders in annotation_files(src).items()]
    classes = class_names(names, files)
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
