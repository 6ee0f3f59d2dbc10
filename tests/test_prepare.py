"""Preparing the raw HW2 data: exact counts on the real data, and clear messages for bad input on small fake trees."""

import os

os.environ.setdefault("YOLO_OFFLINE", "true")

import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ultralytics.data.dataset import SemanticDataset, YOLODataset
from ultralytics.utils import YAML

from yolo_unified.data.config import load_data_config
from yolo_unified.data.prepare import DET_NAMES, SEG_NAMES, prepare_hw2

HW2 = (Path(__file__).resolve().parents[1] / "../shared/data/hw2").resolve()
SPLITS = ("train", "val")
CLS_NAMES = [
    "tench", "English_springer", "cassette_player", "chain_saw", "church",
    "French_horn", "garbage_truck", "gas_pump", "golf_ball", "parachute",
]  # fmt: skip

# Boxes kept per split and class. The README's "1,316 of 2,258 train boxes and 298 of 512 val boxes are kept" and its
# per-class train counts (person 718, car 124, chair 110, book 111, bird 42, ...) count the iscrowd boxes of the 10
# classes too: 22 train (person 15, book 3, bird 2, car 1, chair 1) and 4 val (person 3, car 1). The README's "31
# train, 4 val" iscrowd boxes are over all classes (9 train crowd boxes are of other classes). We drop crowd boxes,
# as Ultralytics' own COCO conversion does, so 1,316 - 22 = 1,294 train and 298 - 4 = 294 val boxes remain.
KEPT = {
    "train": {"person": 703, "car": 123, "dog": 13, "cat": 19, "chair": 109, "dining table": 37, "book": 108,
              "bottle": 75, "cup": 67, "bird": 40},
    "val": {"person": 192, "car": 33, "dog": 2, "cat": 5, "chair": 13, "dining table": 5, "book": 21, "bottle": 10,
            "cup": 6, "bird": 7},
}  # fmt: skip
CROWD = {"train": {"person": 15, "car": 1, "chair": 1, "book": 3, "bird": 2}, "val": {"person": 3, "car": 1}}
README_TRAIN = {"person": 718, "car": 124, "dog": 13, "cat": 19, "chair": 110, "dining table": 37, "book": 111,
                "bottle": 75, "cup": 67, "bird": 42}  # fmt: skip
DUPLICATES = ["000000323751", "000000370486", "000000428111", "000000511204", "000000513567"]

real_data = pytest.mark.skipif(not HW2.is_dir(), reason=f"real HW2 data not found at {HW2} (not part of the repo)")


# ---------------------------------------------------------------------------------------------- the real HW2 data
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[dict, Path]:
    """(summary, dataset root) of the real data prepared once for the module."""
    dst = tmp_path_factory.mktemp("prepared") / "hw2"
    return prepare_hw2(HW2, dst), dst


@real_data
@pytest.mark.hw2
class TestRealData:
    def test_images_per_task_and_split(self, prepared):
        summary, dst = prepared
        assert summary["images"] == {t: {"train": 240, "val": 60} for t in ("seg", "det", "cls")}
        assert summary["skipped"] == []
        for split, n in (("train", 240), ("val", 60)):
            assert len(list((dst / "det/images" / split).glob("*.jpg"))) == n
            assert len(list((dst / "det/labels" / split).glob("*.txt"))) == n
            assert len(list((dst / "seg/images" / split).glob("*.jpg"))) == n
            assert len(list((dst / "seg/masks" / split).glob("*.png"))) == n

    def test_kept_boxes_per_split_and_class(self, prepared):
        summary, _ = prepared
        assert summary["boxes"] == KEPT
        assert {s: sum(c.values()) for s, c in summary["boxes"].items()} == {"train": 1294, "val": 294}
        assert summary["dropped_boxes"] == {
            "train": {"other class": 942, "iscrowd": 22, "degenerate": 0, "not finite": 0},  # 1294 + 942 + 22 = 2258
            "val": {"other class": 214, "iscrowd": 4, "degenerate": 0, "not finite": 0},  # 294 + 214 + 4 = 512
        }
        for name, n in README_TRAIN.items():
            assert KEPT["train"][name] + CROWD["train"].get(name, 0) == n, name

    def test_crowd_boxes_are_the_difference_to_the_readme(self):
        for split in SPLITS:
            coco = json.loads((HW2 / "mini_coco_det" / split / "labels.json").read_text())
            name = {c["id"]: c["name"] for c in coco["categories"]}
            crowd = Counter(name[a["category_id"]] for a in coco["annotations"] if a["iscrowd"])
            assert {k: v for k, v in crowd.items() if k in DET_NAMES} == CROWD[split]

    def test_labels_are_normalised_and_match_the_counts(self, prepared):
        summary, dst = prepared
        for split in SPLITS:
            counts = Counter()
            for label in (dst / "det/labels" / split).glob("*.txt"):
                rows = np.loadtxt(label, ndmin=2)
                assert len(rows), f"{label}: every HW2 image has a box of the 10 classes"
                assert rows.shape[1] == 5 and ((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1)).all(), label
                assert (rows[:, 3:] > 0).all(), label
                counts.update(DET_NAMES[int(c)] for c in rows[:, 0])
            assert {n: counts[n] for n in DET_NAMES} == summary["boxes"][split]

    def test_train_val_duplicates(self, prepared):
        summary, _ = prepared
        assert summary["duplicates"] == {"seg": [], "det": [[f"{i}.jpg", f"{i}.jpg"] for i in DUPLICATES], "cls": []}

    def test_classification_folders(self, prepared):
        _, dst = prepared
        for split, n in (("train", 24), ("val", 6)):
            folders = sorted((dst / "cls" / split).iterdir())
            assert len(folders) == 10 and all(f.name.startswith("n0") for f in folders)
            assert [len(list(f.glob("*.JPEG"))) for f in folders] == [n] * 10

    def test_masks_are_class_ids_of_their_image_size(self, prepared):
        _, dst = prepared
        valid = {*range(len(SEG_NAMES)), 255}
        for split in SPLITS:
            for image in (dst / "seg/images" / split).glob("*.jpg"):
                with Image.open(dst / "seg/masks" / split / f"{image.stem}.png") as m, Image.open(image) as im:
                    assert m.mode == "L" and m.size == im.size, image.name
                    assert set(np.unique(np.array(m)).tolist()) <= valid, image.name

    def test_masks_keep_the_raw_class_ids(self, prepared):
        _, dst = prepared
        raw = HW2 / "mini_voc_seg/train/2007_000250.png"
        with Image.open(raw) as a, Image.open(dst / "seg/masks/train/2007_000250.png") as b:
            assert a.mode == "P" and np.array_equal(np.array(a), np.array(b))

    def test_yaml_sections_and_names(self, prepared):
        summary, dst = prepared
        yaml_path = dst.parent / "hw2.yaml"
        assert summary["yaml"] == str(yaml_path)
        d = YAML.load(yaml_path)
        assert d["path"] == "hw2"
        assert d["seg"]["names"] == dict(enumerate(SEG_NAMES))
        assert d["det"]["names"] == dict(enumerate(DET_NAMES))
        assert d["cls"]["names"] == dict(enumerate(CLS_NAMES))
        cfg = load_data_config(yaml_path)
        assert set(cfg["tasks"]) == {"seg", "det", "cls"}
        assert cfg["tasks"]["det"]["val"] == str(dst.resolve() / "det/images/val")

    def test_ultralytics_reads_the_prepared_data(self, prepared):
        _, dst = prepared
        det = YOLODataset(
            img_path=str(dst / "det/images/val"), data={"names": dict(enumerate(DET_NAMES)), "channels": 3}, imgsz=64
        )
        assert len(det) == 60 and sum(len(lb["cls"]) for lb in det.labels) == 294
        data = {"names": dict(enumerate(SEG_NAMES)), "nc": len(SEG_NAMES), "channels": 3, "masks_dir": "masks"}
        seg = SemanticDataset(img_path=str(dst / "seg/images/val"), data=data, task="semantic", imgsz=64)
        assert len(seg) == 60 and seg[0]["semantic_mask"].shape == (64, 64)

    def test_second_run_is_the_same_and_rewrites_nothing(self, prepared):
        summary, dst = prepared
        stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}
        assert prepare_hw2(HW2, dst) == summary
        assert {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()} == stamps


# ----------------------------------------------------------------------------------------- small fake raw trees
def write_jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A noise JPEG of (width, height) `size` at `path` (distinct bytes for distinct seeds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """A VOC-style palette PNG whose indices are `mask`."""
    im = Image.new("P", (mask.shape[1], mask.shape[0]))
    im.putdata(mask.ravel().tolist())
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])  # colours, not grey levels
    im.save(path)
    return path


def make_raw(root: Path) -> Path:
    """A tiny raw HW2 tree: per split 2 detection images, 2 segmentation pairs and 2 classes of 1 image each.

    Each detection image has one box of each kind: a person (kept), a bird cut by the right image border (kept,
    clipped), a crowd car, a zebra (other class) and a 0.5-px-wide dog (degenerate). Category ids differ per split.
    """
    for s, split in enumerate(SPLITS):
        names = [*DET_NAMES, "zebra"]
        ids = {n: i + 1 for i, n in enumerate(names if split == "train" else names[::-1])}
        images, annotations = [], []
        for i in range(2):
            file = write_jpeg(root / "mini_coco_det" / split / "data" / f"{split}{i}.jpg", (64, 48), 10 * s + i)
            images.append({"id": i + 1, "file_name": file.name, "width": 64, "height": 48})
            boxes = [
                ("person", [2, 3, 20, 30], 0), ("bird", [50, 10, 30, 10], 0), ("car", [5, 5, 10, 10], 1),
                ("zebra", [5, 5, 10, 10], 0), ("dog", [5, 5, 0.5, 10], 0),
            ]  # fmt: skip
            for name, bbox, crowd in boxes:
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": i + 1, "category_id": ids[name], "bbox": bbox,
                     "iscrowd": crowd}
                )  # fmt: skip
        categories = [{"id": i, "name": n} for n, i in ids.items()]
        labels = {"images": images, "annotations": annotations, "categories": categories}
        (root / "mini_coco_det" / split / "labels.json").write_text(json.dumps(labels))
        for i in range(2):
            stem = root / "mini_voc_seg" / split / f"2007_{s}{i}"
            write_jpeg(stem.with_suffix(".jpg"), (40, 30), 100 + 10 * s + i)
            mask = np.zeros((30, 40), np.uint8)
            mask[5:20, 5:20], mask[4, 5:20] = 15, 255
            write_mask(stem.with_suffix(".png"), mask)
        for c, wnid in enumerate(("n01440764", "n02102040")):
            write_jpeg(root / "imagenette_160" / split / wnid / f"{wnid}_{s}.JPEG", (40, 32), 200 + 10 * s + c)
    return root


@pytest.fixture
def raw(tmp_path) -> Path:
    return make_raw(tmp_path / "raw")


def skipped(summary: dict, file: Path) -> str:
    """The reason `file` was skipped (it must have been)."""
    reasons = [s["reason"] for s in summary["skipped"] if s["file"] == str(file)]
    assert len(reasons) == 1, summary["skipped"]
    return reasons[0]


def test_fake_tree_boxes_mapped_by_name_clipped_and_filtered(raw, tmp_path):
    summary = prepare_hw2(raw, tmp_path / "out")
    assert summary["images"] == {t: {"train": 2, "val": 2} for t in ("seg", "det", "cls")}
    kept = {n: 2 if n in {"person", "bird"} else 0 for n in DET_NAMES}
    assert summary["boxes"] == {"train": kept, "val": kept}
    assert summary["dropped_boxes"]["val"] == {"other class": 2, "iscrowd": 2, "degenerate": 2, "not finite": 0}
    rows = np.loadtxt(tmp_path / "out/det/labels/val/val0.txt", ndmin=2)
    np.testing.assert_allclose(rows[0], [0, 12 / 64, 18 / 48, 20 / 64, 30 / 48], atol=1e-6)  # person, id 11 in val
    np.testing.assert_allclose(rows[1], [9, 57 / 64, 15 / 48, 14 / 64, 10 / 48], atol=1e-6)  # bird, clipped at x=64
    assert (tmp_path / "out.yaml").is_file()


def test_mask_of_another_size_is_skipped(raw, tmp_path, logged):
    mask = raw / "mini_voc_seg/train/2007_01.png"
    write_mask(mask, np.zeros((30, 41), np.uint8))
    summary = prepare_hw2(raw, tmp_path / "out")
    assert skipped(summary, mask) == "mask size 41x30 differs from image size 40x30"
    assert summary["images"]["seg"] == {"train": 1, "val": 2}
    assert not (tmp_path / "out/seg/images/train/2007_01.jpg").exists()
    assert any(str(mask) in r.getMessage() and "size" in r.getMessage() for r in logged.records)


def test_mask_value_outside_the_classes_is_skipped(raw, tmp_path, logged):
    mask = raw / "mini_voc_seg/val/2007_10.png"
    bad = np.zeros((30, 40), np.uint8)
    bad[0, 0] = 30
    write_mask(mask, bad)
    summary = prepare_hw2(raw, tmp_path / "out")
    assert skipped(summary, mask) == "mask values [30] are outside 0..20 and 255"
    assert summary["images"]["seg"] == {"train": 2, "val": 1}
    assert any(str(mask) in r.getMessage() and "[30]" in r.getMessage() for r in logged.records)


@pytest.mark.parametrize(
    "task, relative",
    [("det", "mini_coco_det/train/data/train1.jpg"), ("seg", "mini_voc_seg/val/2007_11.jpg"),
     ("cls", "imagenette_160/train/n02102040/n02102040_0.JPEG")],
)  # fmt: skip
def test_truncated_jpeg_is_skipped(raw, tmp_path, logged, task, relative):
    image = raw / relative
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    summary = prepare_hw2(raw, tmp_path / "out")
    assert "unreadable image" in skipped(summary, image) and "truncated" in skipped(summary, image)
    assert sum(summary["images"][task].values()) == 3
    if task == "det":  # the boxes of a skipped image are not counted
        assert summary["boxes"]["train"]["person"] == 1
    assert any(str(image) in r.getMessage() and r.levelno == logging.WARNING for r in logged.records)


@pytest.mark.parametrize(
    "relative", ["mini_voc_seg/val", "mini_coco_det/train", "imagenette_160/val", "mini_coco_det/val/labels.json"]
)
def test_missing_split_raises(raw, tmp_path, relative):
    path = raw / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        prepare_hw2(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the error


def test_det_class_missing_from_every_split_raises(raw, tmp_path):
    for split in SPLITS:
        file = raw / "mini_coco_det" / split / "labels.json"
        labels = json.loads(file.read_text())
        labels["categories"] = [c for c in labels["categories"] if c["name"] != "bird"]
        file.write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"\['bird'\]"):
        prepare_hw2(raw, tmp_path / "out")


def test_image_size_differing_from_the_json_raises(raw, tmp_path):
    image = write_jpeg(raw / "mini_coco_det/val/data/val1.jpg", (60, 48), 0)
    with pytest.raises(ValueError, match=f"{image}: image is 60x48 px but labels.json says 64x48"):
        prepare_hw2(raw, tmp_path / "out")


def test_rerun_replaces_its_own_files_and_refuses_a_dst_with_a_users_file(raw, tmp_path):
    dst = tmp_path / "out"
    first = prepare_hw2(raw, dst)
    (dst / "det/labels/train/train0.txt").write_text("edited")  # a file it wrote: rewritten
    (dst / "det/labels/train.cache").write_bytes(b"derived")  # Ultralytics' cache: regenerated, may go
    assert prepare_hw2(raw, dst) == first
    assert (dst / "det/labels/train/train0.txt").read_text().startswith("0 ")
    user = dst / "cls/train/n09999999/x.JPEG"
    user.parent.mkdir()
    user.write_bytes(b"the user's")
    before = {f: f.read_bytes() for f in dst.rglob("*") if f.is_file()}
    refused = r"holds 1 file\(s\) yolo-unified did not write \(cls/train/n09999999/x.JPEG\)"
    with pytest.raises(ValueError, match=refused):
        prepare_hw2(raw, dst)
    assert {f: f.read_bytes() for f in dst.rglob("*") if f.is_file()} == before


def test_output_inside_the_raw_data_is_refused(raw):
    with pytest.raises(ValueError, match="inside the raw data"):
        prepare_hw2(raw, raw / "prepared")


def edit_labels(raw: Path, split: str, change) -> Path:
    """Apply `change` to the parsed detection labels.json of `split`; return the file."""
    file = raw / "mini_coco_det" / split / "labels.json"
    labels = json.loads(file.read_text())
    change(labels)
    file.write_text(json.dumps(labels))
    return file


@pytest.mark.parametrize("name", ["../../../../outside/secret.jpg", "/etc/outside.jpg"])
def test_a_file_name_leading_outside_the_raw_data_is_refused(raw, tmp_path, name):
    outside = write_jpeg(tmp_path / "outside/secret.jpg", (64, 48), 7)
    file = edit_labels(raw, "train", lambda d: d["images"][0].update(file_name=name))
    with pytest.raises(ValueError, match=f"{re.escape(str(file))}: image 1: file_name '{re.escape(name)}' is not a pa"):
        prepare_hw2(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists() and outside.is_file()


def test_a_box_that_is_not_finite_is_dropped_with_a_warning(raw, tmp_path, logged):
    file = edit_labels(raw, "val", lambda d: d["annotations"][0].update(bbox=[float("nan"), 3, 20, 30]))
    summary = prepare_hw2(raw, tmp_path / "out")
    assert summary["dropped_boxes"]["val"]["not finite"] == 1 and summary["boxes"]["val"]["person"] == 1
    assert "nan" not in (tmp_path / "out/det/labels/val").joinpath("val0.txt").read_text()
    assert any(str(file) in r.getMessage() and "not finite" in r.getMessage() for r in logged.records)


@pytest.mark.parametrize(
    "change, message",
    [(lambda d: d["images"][1].pop("width"), "image 2 has no 'width'"),
     (lambda d: d["annotations"][2].pop("bbox"), "annotation 3 has no 'bbox'"),
     (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation 1 has 'bbox': \\[1, 2, 3\\], not four numbers"),
     (lambda d: d["categories"][0].update(name=None), "category 1 has 'name': None")],
)  # fmt: skip
def test_a_malformed_entry_is_named_with_its_file(raw, tmp_path, change, message):
    file = edit_labels(raw, "val", change)
    with pytest.raises(ValueError, match=f"{re.escape(str(file))}: {message}"):
        prepare_hw2(raw, tmp_path / "out")


def test_a_truncated_json_is_named(raw, tmp_path):
    file = raw / "mini_coco_det/val/labels.json"
    file.write_text(file.read_text()[:100])
    with pytest.raises(ValueError, match=f"{re.escape(str(file))} is not valid JSON \\(line 1, .*\\) - truncated\\?"):
        prepare_hw2(raw, tmp_path / "out")


def test_an_empty_image_is_skipped_as_such(raw, tmp_path):
    image = raw / "mini_coco_det/train/data/train1.jpg"
    image.write_bytes(b"")
    assert skipped(prepare_hw2(raw, tmp_path / "out"), image) == "is an empty file, not an image"
