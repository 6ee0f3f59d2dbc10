"""``yolo-unified data split``: a class subset of one task for class-incremental stages, on the synthetic data (det,
seg, cls classes circle, rectangle, triangle) and on tasks sharing their images."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from ultralytics.utils import YAML

from yolo_unified.cli import run
from yolo_unified.data.class_split import split_classes
from yolo_unified.data.config import image_files, label_file, load_data_config, task_data
from yolo_unified.data.synthetic import DET_NAMES, SEG_NAMES, shared_sample

CHOSEN = ["triangle", "circle"]  # the reverse of the data's order: ids are renumbered


def subset(yaml_path: str | Path, task: str) -> dict:
    """The task section of a written subset, read as training reads it."""
    return task_data(load_data_config(yaml_path), task)


def expected_labels(section: dict, split: str, renumber: dict[str, str]) -> dict[str, list[str]]:
    """Image name -> its box lines of the classes `renumber` maps (source id -> subset id), for the images with any."""
    expected = {}
    for image in image_files(section[split]):
        rows = [line.split(maxsplit=1) for line in label_file(image, "det", section).read_text().splitlines()]
        if kept := [f"{renumber[c]} {rest}" for c, rest in rows if c in renumber]:
            expected[image.name] = kept
    return expected


def read_png(file: Path) -> np.ndarray:
    """A mask's class ids."""
    return np.array(Image.open(file))


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders the split left in `folder`."""
    return sorted(f.name for f in folder.iterdir() if f.name.startswith("."))


def test_det_keeps_the_images_with_the_chosen_boxes_only_renumbered(synth_yaml, tmp_path):
    yaml_path = split_classes(synth_yaml, "det", CHOSEN, tmp_path / "sub")
    assert yaml_path == tmp_path / "sub.yaml"
    source, sub = load_data_config(synth_yaml)["tasks"]["det"], subset(yaml_path, "det")
    assert sub["names"] == {0: "triangle", 1: "circle"} and sub["train"] == str(tmp_path / "sub/det/images/train")
    kept = dropped = 0
    for split in ("train", "val"):
        expected = expected_labels(source, split, {"2": "0", "0": "1"})
        images = image_files(sub[split])
        assert {i.name: label_file(i, "det", sub).read_text().splitlines() for i in images} == expected
        assert all(i.is_symlink() and i.resolve() == (Path(source[split]) / i.name).resolve() for i in images)
        kept, dropped = kept + len(images), dropped + len(image_files(source[split])) - len(images)
    assert kept and dropped  # some images hold neither class
    d = YAML.load(yaml_path)
    assert (d["source"], d["task"], d["classes"]) == (synth_yaml, "det", CHOSEN)  # provenance
    assert leftovers(tmp_path) == []


def test_seg_masks_keep_the_chosen_classes_others_become_background(synth_yaml, tmp_path):
    sub = subset(split_classes(synth_yaml, "seg", CHOSEN, tmp_path / "sub"), "seg")
    source = load_data_config(synth_yaml)["tasks"]["seg"]
    assert sub["names"] == {0: "background", 1: "triangle", 2: "circle"} and sub["masks_dir"] == "masks"
    seen = set()
    for split in ("train", "val"):
        expected = {}
        for image in image_files(source[split]):
            m = read_png(label_file(image, "seg", source))
            if np.isin(m, [1, 3]).any():  # circle 1, triangle 3
                expected[image.name] = np.select([m == 3, m == 1, m == 255], [1, 2, 255], 0)
        got = {i.name: read_png(label_file(i, "seg", sub)) for i in image_files(sub[split])}
        assert got.keys() == expected.keys() and all((got[n] == expected[n]).all() for n in got)
        seen |= {int(v) for m in got.values() for v in np.unique(m)}
    assert seen == {0, 1, 2, 255}  # 255 (the shapes' ignore borders) stays


def test_cls_keeps_the_chosen_class_folders_in_sorted_order(synth_yaml, tmp_path):
    sub = subset(split_classes(synth_yaml, "cls", CHOSEN, tmp_path / "sub"), "cls")
    source = load_data_config(synth_yaml)["tasks"]["cls"]
    assert sub["names"] == {0: "circle", 1: "triangle"}  # as Ultralytics numbers the class folders
    for split in ("train", "val"):
        files = {f.relative_to(sub[split]).as_posix() for f in image_files(sub[split])}
        want = {f.relative_to(source[split]).as_posix() for f in image_files(source[split])}
        assert files == {f for f in want if f.split("/")[0] in CHOSEN}


@pytest.mark.parametrize(
    "task, classes, message",
    [
        ("det", ["circle", "square", "hexagon"], r"has no class named \['square', 'hexagon'\]; its classes are"),
        ("seg", ["background", "circle"], "'background' is class 0"),
        ("cls", ["circle", "circle"], r"repeats \['circle'\]"),
    ],
    ids=["unknown", "background", "repeated"],
)
def test_bad_class_names_fail_naming_the_data_file(synth_yaml, tmp_path, task, classes, message):
    with pytest.raises(ValueError, match=f"{re.escape(synth_yaml)}.*{message}"):
        split_classes(synth_yaml, task, classes, tmp_path / "sub")
    assert list(tmp_path.iterdir()) == []


def test_other_files_are_left_alone(synth_yaml, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.txt").write_text("keep me")
    root = load_data_config(synth_yaml)["path"]
    for dst, yaml_path, message in [
        (tmp_path / "notes", None, r"has no .yolo-unified.json .* would replace or drop \(todo.txt\)"),
        (root / "det", None, "overlaps the data of"),
        (tmp_path / "sub", synth_yaml, "is the source data YAML"),
    ]:
        with pytest.raises(ValueError, match=message):
            split_classes(synth_yaml, "det", CHOSEN, dst, yaml_path)
    assert (tmp_path / "notes/todo.txt").read_text() == "keep me" and leftovers(tmp_path) == []
    assert sorted(f.name for f in root.iterdir()) == ["cls", "det", "seg", "synthetic.json"]


def write_shared(root: Path, n: int = 3) -> Path:
    """Boxes and masks on the same images (the data YAML's shared form); returns the data YAML."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for folder in ("images", "labels", "masks"):
            (root / folder / split).mkdir(parents=True)
        for i in range(n):
            img, boxes, mask = shared_sample(rng, 64)
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text(boxes)
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), mask)
    d = {"path": root.name, "train": "images/train", "val": "images/val", "det": {"names": dict(enumerate(DET_NAMES))}}
    d["seg"] = {"names": dict(enumerate(SEG_NAMES)), "masks_dir": "masks"}
    YAML.save(root.with_suffix(".yaml"), d)
    return root.with_suffix(".yaml")


def test_shared_images_and_a_split_without_the_classes(tmp_path):
    data = write_shared(tmp_path / "shared")
    sub = subset(split_classes(data, "det", CHOSEN, tmp_path / "det"), "det")
    source = task_data(load_data_config(data), "det")
    for split in ("train", "val"):
        got = {i.name: label_file(i, "det", sub).read_text().splitlines() for i in image_files(sub[split])}
        assert got == expected_labels(source, split, {"2": "0", "0": "1"})
    seg = subset(split_classes(data, "seg", ["rectangle"], tmp_path / "seg"), "seg")
    assert seg["names"] == {0: "background", 1: "rectangle"} and image_files(seg["val"])
    for label in (tmp_path / "shared/labels/val").iterdir():  # val: circles only
        label.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(data))}: no val image holds any of \\['triangle'\\]"):
        split_classes(data, "det", ["triangle"], tmp_path / "det")
    assert len(image_files(tmp_path / "det/det/images/train")) == len(got := image_files(sub["train"])) and got
    assert leftovers(tmp_path) == []  # the failed run left the earlier subset as it was, and no temporary folder


def test_cli_action_writes_and_replaces_a_subset(synth_yaml, tmp_path):
    dst = tmp_path / "cli"
    yaml_path = run(["data", "split", f"data={synth_yaml}", "task=seg", "classes=circle,triangle", f"dst={dst}"])
    assert yaml_path == tmp_path / "cli.yaml" and subset(yaml_path, "seg")["nc"] == 3
    other = tmp_path / "other.yaml"
    run(["data", "split", f"data={synth_yaml}", "task=seg", "classes=[rectangle]", f"dst={dst}", f"yaml={other}"])
    assert subset(other, "seg")["names"] == {0: "background", 1: "rectangle"}
    masks = [read_png(f) for f in (dst / "seg/masks/train").iterdir()]
    assert masks and all(set(np.unique(m)) <= {0, 1, 255} for m in masks)  # the new subset replaced the old one
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cli", "cli.yaml", "other.yaml"]
    with pytest.raises(SyntaxError, match="'data split' needs classes= and dst="):
        run(["data", "split", f"data={synth_yaml}", "task=seg"])
    with pytest.raises(SyntaxError, match=r"unknown key\(s\) \['names'\]"):
        run(["data", "split", f"data={synth_yaml}", "names=circle"])
