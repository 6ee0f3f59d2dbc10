"""Turn the raw HW2 data (COCO-style boxes, VOC palette masks, Imagenette folders) into the multi-task layout
(`layout.LAYOUT`: a ``det/``, ``seg/`` and ``cls/`` folder and one data YAML)."""

from __future__ import annotations

import hashlib
import io
import math
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from ultralytics.nn.autobackend import check_class_names
from ultralytics.utils import LOGGER, TQDM

from yolo_unified.data.config import derived_file, image_size
from yolo_unified.data.layout import IGNORE, check_own_yaml, publish_yaml, write_data_yaml, yolo_box
from yolo_unified.files import OutputFolder, inside, read_json

SPLITS = ("train", "val")
RAW_DIRS = {"seg": "mini_voc_seg", "det": "mini_coco_det", "cls": "imagenette_160"}  # task -> folder in the raw data
DET_NAMES = ("person", "car", "dog", "cat", "chair", "dining table", "book", "bottle", "cup", "bird")
SEG_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IN_COCO = {  # the VOC classes COCO names otherwise (every VOC class is a COCO category)
    "aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle", "pottedplant": "potted plant",
    "sofa": "couch", "tvmonitor": "tv",
}  # fmt: skip
DROP_REASONS = ("other class", "iscrowd", "degenerate", "not finite")  # why a detection box is left out
MASK_VALUES = np.array([*range(len(SEG_NAMES)), IGNORE])


@dataclass
class _Scan:
    """What scanning the raw data found: files to write, hashes of the kept images, and what was skipped."""

    files: dict[Path, Path | bytes] = field(default_factory=dict)  # destination -> source to copy, or its content
    hashes: dict[str, dict[str, dict[str, str]]] = field(  # task -> split -> {name in the split: sha256 of bytes}
        default_factory=lambda: {task: {split: {} for split in SPLITS} for task in RAW_DIRS}
    )
    skipped: list[dict[str, str]] = field(default_factory=list)

    def keep(self, task: str, split: str, name: str, sha: str) -> None:
        """Record a kept image of `task`/`split` by its name inside the split and the sha256 of its bytes."""
        self.hashes[task][split][name] = sha

    def skip(self, task: str, split: str, file: Path, reason: str) -> None:
        """Leave `file` out of the prepared data, with a warning saying why."""
        self.skipped.append({"task": task, "split": split, "file": str(file), "reason": reason})
        LOGGER.warning(f"{task} {split}: skipping {file}: {reason}")

    def image(self, task: str, split: str, file: Path) -> tuple[str, tuple[int, int]] | None:
        """The sha256 and (width, height) of an image that decodes completely; None (skipped) otherwise."""
        try:
            size = image_size(file)
        except ValueError as e:
            self.skip(task, split, file, str(e))
            return None
        return hashlib.sha256(file.read_bytes()).hexdigest(), size


def _require(path: Path) -> Path:
    """Return `path`, or raise FileNotFoundError naming it when it does not exist."""
    if not path.exists():
        raise FileNotFoundError(f"HW2 data not found: {path} is missing")
    return path


TYPE_WORDS = {int: "an integer", str: "a string", list: "a list"}
DET_FIELDS = {  # list in labels.json -> (what one entry is called, the fields read from it and their types)
    "images": ("image", {"id": (int, str), "file_name": str, "width": int, "height": int}),
    "annotations": ("annotation", {"image_id": (int, str), "category_id": int, "bbox": list}),
    "categories": ("category", {"id": int, "name": str}),
}


def _read_det_json(file: Path) -> dict[str, list[dict]]:
    """A detection labels.json, every entry checked to have the fields read from it (`DET_FIELDS`) with the right
    types, and every box four numbers; a ValueError names the file, the entry and the problem."""
    d = read_json(_require(file))
    if not isinstance(d, dict):
        raise ValueError(f"{file}: not a COCO JSON (a mapping with images, annotations and categories)")
    for key, (kind, fields) in DET_FIELDS.items():
        if not isinstance(d.get(key), list):
            raise ValueError(f"{file}: no '{key}' list")
        for n, entry in enumerate(d[key]):
            which = f"{kind} {entry.get('id', f'#{n + 1}')!r}" if isinstance(entry, dict) else f"{kind} #{n + 1}"
            if not isinstance(entry, dict):
                raise ValueError(f"{file}: {which} is not a mapping: {str(entry)[:80]}")
            for name, types in fields.items():
                if name not in entry:
                    raise ValueError(f"{file}: {which} has no '{name}'")
                if not isinstance(entry[name], types) or isinstance(entry[name], bool):
                    expected = " or ".join(TYPE_WORDS[t] for t in (types if isinstance(types, tuple) else (types,)))
                    raise ValueError(f"{file}: {which} has '{name}': {entry[name]!r}, not {expected}")
            bbox = entry.get("bbox", [0] * 4)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
                raise ValueError(f"{file}: {which} has 'bbox': {bbox!r}, not four numbers [x, y, w, h]")
    return d


def _det_label(file: Path, anns: list[dict], cls_of: dict[int, int], size: tuple[int, int], kept: Counter,
               drop: Counter) -> str:  # fmt: skip
    """The YOLO label text of one image's annotations `anns` (of the JSON `file`); kept boxes are counted per class,
    dropped ones per reason: other class, crowd, degenerate after clipping, or not finite (with a warning)."""
    lines = []
    for a in anns:
        c = cls_of.get(a["category_id"])
        if c is not None and not a.get("iscrowd") and not all(math.isfinite(v) for v in a["bbox"]):
            LOGGER.warning(f"{file}: annotation {a.get('id')!r} has a box that is not finite {a['bbox']}: dropped")
            drop["not finite"] += 1
            continue
        box = None if c is None or a.get("iscrowd") else yolo_box(a["bbox"], *size, min_side=1)
        if box is None:
            drop["other class" if c is None else "iscrowd" if a.get("iscrowd") else "degenerate"] += 1
            continue
        lines.append(f"{c} " + " ".join(f"{v:.6f}" for v in box) + "\n")
        kept[DET_NAMES[c]] += 1
    return "".join(lines)


def _scan_det(raw: Path, out: Path, scan: _Scan) -> tuple[dict, dict]:
    """Plan the detection images and YOLO labels (categories matched by name; crowd, other-class, degenerate and
    non-finite boxes dropped); return kept boxes per split and class, and dropped boxes per split."""
    coco = {s: _read_det_json(raw / s / "labels.json") for s in SPLITS}
    categories = {s: {c["name"] for c in d["categories"]} for s, d in coco.items()}
    unknown = [n for n in DET_NAMES if not any(n in c for c in categories.values())]
    if unknown:
        raise ValueError(f"det class name(s) {unknown} are in no split's categories of {raw}/<split>/labels.json")
    boxes, dropped = {}, {}
    for split, d in coco.items():
        if absent := [n for n in DET_NAMES if n not in categories[split]]:
            LOGGER.warning(f"det {split}: no {absent} category in {raw / split / 'labels.json'}: 0 boxes of them")
        cls_of = {c["id"]: DET_NAMES.index(c["name"]) for c in d["categories"] if c["name"] in DET_NAMES}
        anns = defaultdict(list)
        for a in d["annotations"]:
            anns[a["image_id"]].append(a)
        kept, drop = Counter(dict.fromkeys(DET_NAMES, 0)), Counter(dict.fromkeys(DROP_REASONS, 0))
        folder, json_file = _require(raw / split / "data"), raw / split / "labels.json"
        listed = {im["file_name"] for im in d["images"]}
        for file in sorted(f for f in folder.iterdir() if f.name not in listed):
            scan.skip("det", split, file, "not listed in labels.json")
        for im in TQDM(d["images"], desc=f"det {split}"):
            try:
                file = inside(folder, im["file_name"])
            except ValueError as e:
                raise ValueError(f"{json_file}: image {im['id']!r}: file_name {e}; nothing outside is read") from e
            if not file.is_file():
                scan.skip("det", split, file, "listed in labels.json but missing")
                continue
            if (checked := scan.image("det", split, file)) is None:
                continue
            sha, (w, h) = checked
            if (w, h) != (im["width"], im["height"]):
                raise ValueError(f"{file}: image is {w}x{h} px but labels.json says {im['width']}x{im['height']}")
            label = _det_label(json_file, anns[im["id"]], cls_of, (w, h), kept, drop)
            scan.keep("det", split, file.name, sha)
            scan.files[out / "images" / split / file.name] = file
            scan.files[out / "labels" / split / f"{file.stem}.txt"] = label.encode()
        boxes[split], dropped[split] = dict(kept), dict(drop)
    return boxes, dropped


def _read_mask(file: Path, size: tuple[int, int]) -> np.ndarray:
    """The class ids of a mask, checked against its image's (width, height); ValueError says what is wrong."""
    with Image.open(file) as im:
        if im.mode not in {"P", "L"}:
            raise ValueError(f"mask mode {im.mode} is not one channel of class ids")
        if im.size != size:
            raise ValueError(f"mask size {im.size[0]}x{im.size[1]} differs from image size {size[0]}x{size[1]}")
        mask = np.array(im)  # palette indices (the class ids), not the palette's colours
    if (bad := np.setdiff1d(mask, MASK_VALUES)).size:
        raise ValueError(f"mask values {bad.tolist()} are outside 0..{len(SEG_NAMES) - 1} and {IGNORE}")
    return mask


def _scan_seg(raw: Path, out: Path, scan: _Scan) -> None:
    """Plan the segmentation images and their masks, re-encoded as 8-bit class-id PNGs; bad pairs are skipped."""
    for split in SPLITS:
        folder = _require(raw / split)
        files = sorted(folder.iterdir())
        images = {f.stem: f for f in files if f.suffix.lower() != ".png"}
        for mask_file in (f for f in files if f.suffix.lower() == ".png" and f.stem not in images):
            scan.skip("seg", split, mask_file, "mask without an image")
        for stem, file in TQDM(images.items(), desc=f"seg {split}"):
            mask_file = folder / f"{stem}.png"
            if not mask_file.is_file():
                scan.skip("seg", split, file, f"no mask {mask_file.name}")
                continue
            if (checked := scan.image("seg", split, file)) is None:
                continue
            sha, size = checked
            try:
                mask = _read_mask(mask_file, size)
            except Exception as e:  # unreadable files raise many types; _read_mask's own checks raise ValueError
                scan.skip("seg", split, mask_file, str(e) if isinstance(e, ValueError) else f"unreadable mask ({e})")
                continue
            png = io.BytesIO()
            Image.fromarray(mask).save(png, format="PNG")
            scan.keep("seg", split, file.name, sha)
            scan.files[out / "images" / split / file.name] = file
            scan.files[out / "masks" / split / f"{stem}.png"] = png.getvalue()


def _scan_cls(raw: Path, out: Path, scan: _Scan) -> list[str]:
    """Plan the classification images (class folders kept); return the readable class names in folder order."""
    wnids = {s: sorted(d.name for d in _require(raw / s).iterdir() if d.is_dir()) for s in SPLITS}
    if wnids["train"] != wnids["val"]:
        raise ValueError(
            f"{raw}: train and val class folders differ: {sorted(set(wnids['train']) ^ set(wnids['val']))}"
        )
    for split in SPLITS:
        files = sorted(f for wnid in wnids[split] for f in (raw / split / wnid).iterdir() if f.is_file())
        for file in TQDM(files, desc=f"cls {split}"):
            if (checked := scan.image("cls", split, file)) is None:
                continue
            scan.keep("cls", split, f"{file.parent.name}/{file.name}", checked[0])
            scan.files[out / split / file.parent.name / file.name] = file
    return list(check_class_names(wnids["train"]).values())


def _duplicates(hashes: dict[str, dict[str, str]]) -> list[list[str]]:
    """``[train name, val name]`` pairs of byte-identical images across the two splits of one task."""
    train = {sha: name for name, sha in hashes["train"].items()}
    return [[train[sha], name] for name, sha in sorted(hashes["val"].items()) if sha in train]


def _write_files(files: dict[Path, Path | bytes], root: Path) -> None:
    """Write `files` (relative path -> source file to copy with its timestamps, or the file's bytes) under `root`."""
    for relative, source in TQDM(files.items(), desc="writing"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            shutil.copy2(source, path)


def _log_summary(summary: dict) -> None:
    """Log the summary as readable tables: images per task and split, then kept boxes per class and split."""
    images, boxes = summary["images"], summary["boxes"]
    rows = [f"{'task':<6}{'train':>8}{'val':>8}{'skipped':>9}{'train/val duplicates':>22}"]
    for task, n in images.items():
        skipped = sum(s["task"] == task for s in summary["skipped"])
        rows.append(f"{task:<6}{n['train']:>8}{n['val']:>8}{skipped:>9}{len(summary['duplicates'][task]):>22}")
    rows.append(f"\n{'det class':<14}{'train':>8}{'val':>8}")
    rows += [f"{name:<14}{boxes['train'][name]:>8}{boxes['val'][name]:>8}" for name in DET_NAMES]
    rows.append(f"{'total':<14}{sum(boxes['train'].values()):>8}{sum(boxes['val'].values()):>8}")
    for split, d in summary["dropped_boxes"].items():
        rows.append(f"dropped {split} boxes: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    LOGGER.info("HW2 prepared:\n" + "\n".join(rows))


def prepare_hw2(src: str | Path, dst: str | Path, yaml_path: str | Path | None = None) -> dict:
    """Convert the raw HW2 data at `src` into the multi-task layout at `dst` (an `OutputFolder`) and write its data
    YAML (default ``dst.parent / f"{dst.name}.yaml"``).

    Images are copied, boxes become YOLO labels of the 10 benchmark classes, VOC masks 8-bit class-id PNGs; unreadable
    images, bad image/mask pairs and boxes that are not finite are skipped with a warning; byte-identical train/val
    images are reported, not removed. Returns the summary: images, kept and dropped boxes, skipped files, duplicates."""
    src, dst = Path(src), Path(dst)
    yaml_path = Path(yaml_path) if yaml_path else dst.parent / f"{dst.name}.yaml"
    for folder in RAW_DIRS.values():
        for split in SPLITS:
            _require(src / folder / split)
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"dst {dst} is inside the raw data {src}, which must stay untouched")
    check_own_yaml(yaml_path)
    output = OutputFolder(dst, "yolo-unified data prepare", derived=derived_file)
    scan = _Scan()
    out = {task: Path(task) for task in RAW_DIRS}  # the files' places inside dst
    _scan_seg(src / RAW_DIRS["seg"], out["seg"], scan)
    boxes, dropped = _scan_det(src / RAW_DIRS["det"], out["det"], scan)
    cls_names = _scan_cls(src / RAW_DIRS["cls"], out["cls"], scan)
    duplicates = {task: _duplicates(hashes) for task, hashes in scan.hashes.items()}
    for task, pairs in duplicates.items():
        if pairs:
            LOGGER.warning(
                f"{task}: {len(pairs)} images are byte-identical in train and val (kept, so results stay comparable "
                f"with other work on this data): {', '.join(v for _, v in pairs)}"
            )
    with output as build:
        _write_files(scan.files, build)
    LOGGER.info(f"{dst}: {len(scan.files)} files {'written' if output.changed else 'up to date, nothing rewritten'}")
    names = {"seg": list(SEG_NAMES), "det": list(DET_NAMES), "cls": cls_names}
    provenance = {  # duplicates as {task: {val image: its byte-identical train image}}
        "source": str(src),  # as given: a relative path stays portable
        "train_val_duplicates": {task: {v: t for t, v in pairs} for task, pairs in duplicates.items() if pairs},
    }
    publish_yaml(yaml_path, lambda draft: write_data_yaml(draft, dst, names, extra=provenance))
    summary = {
        "dst": str(dst),
        "yaml": str(yaml_path),
        "images": {task: {split: len(h) for split, h in hashes.items()} for task, hashes in scan.hashes.items()},
        "boxes": boxes,
        "dropped_boxes": dropped,
        "skipped": scan.skipped,
        "duplicates": duplicates,
    }
    _log_summary(summary)
    return summary
