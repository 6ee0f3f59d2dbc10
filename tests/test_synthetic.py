"""The built-in synthetic data: layout, labels, masks, determinism and no needless regeneration."""

import os

os.environ.setdefault("YOLO_OFFLINE", "true")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ultralytics.utils import YAML

from yolo_unified.data.synthetic import CLS_NAMES, DET_NAMES, SEG_NAMES, make_synthetic

N_TRAIN, N_VAL, IMGSZ = 6, 3, 64
SPLITS = {"train": N_TRAIN, "val": N_VAL}


def make(dst: Path, **kwargs) -> Path:
    """A tiny synthetic dataset at `dst` (the test size unless overridden)."""
    return make_synthetic(dst, **{"n_train": N_TRAIN, "n_val": N_VAL, "imgsz": IMGSZ, "seed": 0, **kwargs})


def contents(root: Path, pattern: str) -> dict[str, bytes]:
    """{relative path: bytes} of the files under `root` matching `pattern`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Path]:
    """(data YAML, dataset root) of one tiny synthetic dataset shared by the module's tests."""
    root = tmp_path_factory.mktemp("synth") / "synth"
    return make(root), root


def test_yaml_beside_the_root_with_three_sections(synth):
    yaml_path, root = synth
    assert yaml_path == root.parent / "synth.yaml"
    d = YAML.load(yaml_path)
    assert d["path"] == "synth"  # relative to the YAML's folder
    assert {k for k in d if k in {"seg", "det", "cls"}} == {"seg", "det", "cls"}
    assert d["seg"]["masks_dir"] == "masks"
    for task, names in (("seg", SEG_NAMES), ("det", DET_NAMES), ("cls", CLS_NAMES)):
        assert d[task]["names"] == dict(enumerate(names))
        for split in SPLITS:
            assert (root / d[task][split]).is_dir()


def test_layout_and_counts(synth):
    _, root = synth
    for split, n in SPLITS.items():
        det = sorted((root / "det/images" / split).glob("*.jpg"))
        seg = sorted((root / "seg/images" / split).glob("*.jpg"))
        assert len(det) == len(seg) == n
        assert [p.stem for p in sorted((root / "det/labels" / split).glob("*.txt"))] == [p.stem for p in det]
        assert [p.stem for p in sorted((root / "seg/masks" / split).glob("*.png"))] == [p.stem for p in seg]
        folders = sorted(p.name for p in (root / "cls" / split).iterdir())
        assert folders == CLS_NAMES
        per_class = [len(list((root / "cls" / split / c).glob("*.jpg"))) for c in CLS_NAMES]
        assert sum(per_class) == n and max(per_class) - min(per_class) <= 1  # balanced classes
        for p in [*det, *seg, *(root / "cls" / split).rglob("*.jpg")]:
            with Image.open(p) as im:
                assert (im.format, im.size, im.mode) == ("JPEG", (IMGSZ, IMGSZ), "RGB")


def test_task_image_sets_are_distinct(synth):
    _, root = synth
    sets = [set(contents(root / folder, "*.jpg").values()) for folder in ("det/images", "seg/images", "cls")]
    assert all(len(s) == N_TRAIN + N_VAL for s in sets)  # no image repeated within a task
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_yolo_labels_are_valid(synth):
    _, root = synth
    for label in root.glob("det/labels/*/*.txt"):
        rows = np.loadtxt(label, ndmin=2)
        assert rows.shape[1] == 5 and 1 <= len(rows) <= 3, label
        cls, cx, cy, w, h = rows.T
        assert set(cls) <= set(range(len(DET_NAMES)))
        assert (w > 0).all() and (h > 0).all()
        assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
        assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
        assert (np.minimum(w, h) * IMGSZ >= 2).all()  # shapes are at least 15% of the side; >= half visible


def test_masks_hold_class_ids_and_ignore_borders(synth):
    _, root = synth
    seen = set()
    for mask_file in root.glob("seg/masks/*/*.png"):
        with Image.open(mask_file) as im:
            assert im.mode == "L" and im.size == (IMGSZ, IMGSZ)
            mask = np.array(im)
        values = set(np.unique(mask).tolist())
        assert values <= {*range(len(SEG_NAMES)), 255}, mask_file
        assert 0 in values and 255 in values and values - {0, 255}, mask_file  # background, borders, a shape
        seen |= values
    assert seen == {*range(len(SEG_NAMES)), 255}


def test_same_seed_same_data_other_seed_other_data(synth, tmp_path):
    _, root = synth
    again, other = tmp_path / "again", tmp_path / "other"
    make(again)
    make(other, seed=1)
    for pattern in ("*.txt", "*.png", "*.jpg"):
        assert contents(again, pattern) == contents(root, pattern), pattern
        assert contents(other, pattern) != contents(root, pattern), pattern


def test_second_call_does_not_regenerate(synth):
    yaml_path, root = synth
    stamps = {p: p.stat().st_mtime_ns for p in [yaml_path, *root.rglob("*")] if p.is_file()}
    assert make(root) == yaml_path
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p for p in root.rglob("*") if p.is_file()} == set(stamps) - {yaml_path}


def test_other_parameters_or_a_missing_file_regenerate(tmp_path):
    root = tmp_path / "s"
    make(root)
    make(root, n_train=4, n_val=2)  # other parameters: the old files go
    assert len(list((root / "det/images/train").glob("*.jpg"))) == 4
    assert len(list(root.glob("cls/val/*/*.jpg"))) == 2
    (root / "seg/masks/val/00001.png").unlink()  # incomplete copy: made again
    make(root, n_train=4, n_val=2)
    assert (root / "seg/masks/val/00001.png").is_file()


def test_default_size_generates(tmp_path):
    yaml_path = make_synthetic(tmp_path / "default")
    d = YAML.load(yaml_path)
    assert d["synthetic"] == {"generator": 2, "n_train": 96, "n_val": 32, "imgsz": 96, "seed": 0}
    assert len(list((tmp_path / "default/seg/masks/train").glob("*.png"))) == 96
    assert len(list((tmp_path / "default/cls/val").glob("*/*.jpg"))) == 32


def test_bad_parameters_raise(tmp_path):
    with pytest.raises(ValueError, match="imgsz"):
        make_synthetic(tmp_path / "x", imgsz=16)


def test_shapes_stand_apart_and_cls_images_show_their_class(synth):
    _, root = synth
    for label in (root / "det/labels").rglob("*.txt"):
        boxes = np.loadtxt(label, ndmin=2)
        assert 1 <= len(boxes) <= 2 and set(boxes[:, 0]) <= set(range(len(DET_NAMES)))
    for file in (root / "seg/masks").rglob("*.png"):  # the shapes do not touch: background or ignore between them
        m = np.array(Image.open(file)).astype(int)
        m[m == 255] = 0  # ignore borders count as background here
        for a, b in ((m[:, :-1], m[:, 1:]), (m[:-1], m[1:])):  # horizontal and vertical neighbours
            assert not ((a > 0) & (b > 0) & (a != b)).any(), file
    for folder, name in zip(sorted((root / "cls/train").iterdir()), CLS_NAMES, strict=True):
        assert folder.name == name and name in DET_NAMES  # classification: which of the shapes an image shows
