"""Converting COCO instance annotations into images shared by det and seg: exact pixels and boxes on hand-made JSONs,
one clear error per bad input with nothing left behind, and the per-class counts of the real mini_coco."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from ultralytics.cfg import ROOT as ULTRALYTICS_ROOT
from ultralytics.utils import YAML

from yolo_unified.cli import coco_names, run
from yolo_unified.data.coco import convert_coco
from yolo_unified.data.config import labelled_images, load_data_config
from yolo_unified.data.prepare import DET_NAMES, SEG_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2
MINI_COCO = (Path(__file__).resolve().parents[1] / "../shared/data/mini_coco").resolve()
ULTRALYTICS_CFG = ULTRALYTICS_ROOT / "cfg"
W, H = 12, 10  # the hand-made images' size
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
SQUARE = [2, 2, 6, 2, 6, 6, 2, 6]  # pycocotools fills rows 2-5, columns 2-5: 16 pixels
WHOLE = [0, 0, W, 0, W, H, 0, H]

# mini_coco boxes of the ten HW2 classes per split. Its README's counts (person 538 / 129, ...) include the crowd
# boxes; the converter drops those, so kept + crowd must give the README's numbers.
README = {
    "train": {"person": 538, "car": 71, "dog": 13, "cat": 6, "chair": 84, "dining table": 24, "book": 68,
              "bottle": 28, "cup": 32, "bird": 23},
    "val": {"person": 129, "car": 22, "dog": 2, "cat": 4, "chair": 12, "dining table": 4, "book": 3, "bottle": 15,
            "cup": 15, "bird": 17},
}  # fmt: skip
CROWD = {"train": {"person": 13, "car": 1, "chair": 1, "book": 2}, "val": {"person": 2, "bird": 1}}


def annotation(
    ann_id: int,
    category_id: int,
    segmentation: list | dict,
    bbox: tuple = (0, 0, 1, 1),
    crowd: int = 0,
) -> dict:
    """One COCO annotation of image 1."""
    return {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": list(bbox),
            "segmentation": segmentation, "iscrowd": crowd, "area": 1.0}  # fmt: skip


def make_source(
    src: Path,
    annotations: list[dict],
    images: tuple[tuple[str, str], ...] = (("train", "a.jpg"),),
    categories: list[dict] | None = None,
    json_name: str = "labels.json",
) -> Path:
    """A COCO source of W x H images: ``src/<json_name>`` covering ``src/<split>/<name>`` (image ids 1, 2, ...)."""
    for split, name in images:
        (src / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), "gray").save(src / split / name)
    entries = [{"id": i, "file_name": name, "width": W, "height": H} for i, (_, name) in enumerate(images, 1)]
    coco = {"images": entries, "annotations": annotations, "categories": categories or CATEGORIES}
    (src / json_name).parent.mkdir(parents=True, exist_ok=True)
    (src / json_name).write_text(json.dumps(coco))
    return src


def read_mask(dst: Path, name: str = "a", split: str = "train") -> np.ndarray:
    """The converted mask of image `name`."""
    return np.array(Image.open(dst / "masks" / split / f"{name}.png"))


def read_labels(dst: Path, name: str = "a", split: str = "train") -> list[str]:
    """The converted YOLO label lines of image `name`."""
    return (dst / "labels" / split / f"{name}.txt").read_text().splitlines()


def rle_block(rows: slice, cols: slice) -> dict:
    """A compressed RLE (JSON-ready) of a W x H mask that is 1 in the block `rows` x `cols`."""
    block = np.zeros((H, W), np.uint8, order="F")
    block[rows, cols] = 1
    rle = mask_utils.encode(block)
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_polygon_and_rle_masks_and_boxes(tmp_path):
    uncompressed = {"size": [H, W], "counts": [0, 2, H - 2, 2, H * W - H - 4]}  # column-major: rows 0-1, columns 0-1
    anns = [
        annotation(1, 1, [SQUARE], bbox=(2, 2, 4, 4)),
        annotation(2, 3, rle_block(slice(6, 9), slice(8, 11)), bbox=(8, 6, 3, 3)),
        annotation(3, 18, uncompressed, bbox=(0, 0, 2, 2)),
    ]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns), dst)
    expected = np.zeros((H, W), np.uint8)
    expected[2:6, 2:6], expected[6:9, 8:11], expected[0:2, 0:2] = 1, 2, 3
    assert np.array_equal(read_mask(dst), expected)
    assert read_labels(dst) == [
        "0 0.333333 0.400000 0.333333 0.400000",
        "1 0.791667 0.750000 0.250000 0.300000",
        "2 0.083333 0.100000 0.166667 0.200000",
    ]
    train = summary["splits"]["train"]
    assert train["mask_pixels"] == {"background": W * H - 29, "person": 16, "car": 9, "dog": 4, "ignore": 0}
    assert train["boxes"] == {"person": 1, "car": 1, "dog": 1} and summary["names"] == ["person", "car", "dog"]


def test_crowd_is_ignored_and_smaller_instances_stay_on_top(tmp_path):
    anns = [
        annotation(1, 18, [SQUARE], bbox=(2, 2, 4, 4)),  # listed first, painted last: it is the smaller one
        annotation(2, 1, rle_block(slice(7, 10), slice(8, 12)), bbox=(8, 7, 4, 3), crowd=1),
        annotation(3, 1, [WHOLE], bbox=(0, 0, W, H)),
    ]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns), dst)
    expected = np.ones((H, W), np.uint8)
    expected[2:6, 2:6], expected[7:10, 8:12] = 3, 255
    assert np.array_equal(read_mask(dst), expected)
    assert [line.split()[0] for line in read_labels(dst)] == ["2", "0"]  # the crowd box is dropped
    train = summary["splits"]["train"]
    assert train["crowd_boxes_dropped"] == {"person": 1, "car": 0, "dog": 0} and train["boxes"]["person"] == 1


@pytest.mark.parametrize("others, value", [("background", 0), ("ignore", 255)])
def test_chosen_classes_by_name_and_the_others(tmp_path, others, value):
    anns = [
        annotation(1, 1, [WHOLE], bbox=(0, 0, W, H)),
        annotation(2, 3, [SQUARE], bbox=(2, 2, 4, 4)),  # a car, not chosen, in front of the person
        annotation(3, 3, rle_block(slice(7, 10), slice(8, 12)), bbox=(8, 7, 4, 3), crowd=1),  # crowd, not chosen
        annotation(4, 18, rle_block(slice(0, 2), slice(9, 12)), bbox=(9, 0, 3, 2)),
    ]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns), dst, names=["dog", "person"], others=others)
    expected = np.full((H, W), 2, np.uint8)
    expected[2:6, 2:6], expected[7:10, 8:12], expected[0:2, 9:12] = value, value, 1
    assert np.array_equal(read_mask(dst), expected)
    assert [line.split()[0] for line in read_labels(dst)] == ["1", "0"]
    train = summary["splits"]["train"]
    assert train["left_out_annotations"] == 2 and train["boxes"] == {"dog": 1, "person": 1}
    assert train["crowd_boxes_dropped"] == {"dog": 0, "person": 0}
    data = load_data_config(summary["yaml"])
    assert data["tasks"]["det"]["names"] == {0: "dog", 1: "person"}
    assert data["tasks"]["seg"]["names"] == {0: "background", 1: "dog", 2: "person"}
    assert data["tasks"]["seg"]["shared"] and data["tasks"]["det"]["shared"]


def test_a_category_under_another_name(tmp_path):
    anns = [annotation(1, 1, [WHOLE], bbox=(0, 0, W, H)), annotation(2, 18, [SQUARE], bbox=(2, 2, 4, 4))]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns), dst, names=["hound:dog", "person"])
    expected = np.full((H, W), 2, np.uint8)
    expected[2:6, 2:6] = 1
    assert np.array_equal(read_mask(dst), expected)
    assert [line.split()[0] for line in read_labels(dst)] == ["1", "0"]
    assert summary["names"] == ["hound", "person"] and summary["categories"] == {"hound": "dog"}
    assert summary["splits"]["train"]["boxes"] == {"hound": 1, "person": 1}
    data = load_data_config(summary["yaml"])
    assert data["tasks"]["seg"]["names"] == {0: "background", 1: "hound", 2: "person"}
    with pytest.raises(ValueError, match=r"repeats category \['dog'\]"):
        convert_coco(tmp_path / "src", tmp_path / "again", names=["hound:dog", "dog"])
    with pytest.raises(ValueError, match="no category named 'hund'"):
        convert_coco(tmp_path / "src", tmp_path / "again", names=["dog:hund"])


def test_points_and_boxes_outside_the_image_are_clipped(tmp_path):
    anns = [
        annotation(1, 1, [[-3, 1, 4, 1, 4, 5, -3, 5]], bbox=(-3, 1, 7, 4)),
        annotation(2, 3, [[20, 20, 25, 20, 25, 25, 20, 25], SQUARE], bbox=(20, 20, 5, 5)),  # box all outside
    ]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns), dst)
    expected = np.zeros((H, W), np.uint8)
    expected[1:5, 0:4], expected[2:6, 2:6] = 1, 2
    assert np.array_equal(read_mask(dst), expected)
    assert read_labels(dst) == ["0 0.166667 0.300000 0.333333 0.400000"]
    train = summary["splits"]["train"]
    assert train["polygons_clipped"] == 2 and train["empty_boxes_dropped"] == 1


def test_categories_holding_the_whole_category_dict_are_read_with_a_warning(tmp_path, logged):
    quirk = [{"id": i, "name": c, "supercategory": c} for i, c in enumerate(CATEGORIES)]  # outer ids 0, 1, 2
    anns = [annotation(1, 3, [SQUARE], bbox=(2, 2, 4, 4)), annotation(2, 1, [[0, 0, 2, 0, 2, 2, 0, 2]])]
    dst = tmp_path / "out"
    summary = convert_coco(make_source(tmp_path / "src", anns, categories=quirk), dst, names=["car"])
    assert read_labels(dst) == ["0 0.333333 0.400000 0.333333 0.400000"]
    assert summary["splits"]["train"]["mask_pixels"]["car"] == 16
    assert "3 of 3 categories hold the whole category dict in 'name'" in logged.text


def test_images_without_annotation_and_images_not_in_the_json(tmp_path):
    src = make_source(tmp_path / "src", [], images=(("train", "a.jpg"), ("val", "b.jpg")))
    Image.new("RGB", (W, H)).save(src / "val" / "extra.jpg")
    dst = tmp_path / "out"
    summary = convert_coco(src, dst)
    assert read_labels(dst, "b", "val") == [] and not read_mask(dst, "b", "val").any()
    assert summary["splits"]["val"]["images_without_annotation"] == 1
    assert summary["splits"]["val"]["unlisted_images"] == 1 and not (dst / "images/val/extra.jpg").exists()
    data = load_data_config(summary["yaml"])
    assert [f.name for f in labelled_images(data, "val")["det"]] == ["b.jpg"]


def test_a_second_run_rewrites_nothing_and_a_changed_input_is_written(tmp_path):
    anns = [annotation(1, 1, [SQUARE], bbox=(2, 2, 4, 4)), annotation(2, 3, [WHOLE], bbox=(0, 0, W, H))]
    src, dst = make_source(tmp_path / "src", anns), tmp_path / "out"
    first = convert_coco(src, dst)
    assert os.path.samefile(dst / "images/train/a.jpg", src / "train/a.jpg")  # a hard link, same file system
    files = sorted([*dst.rglob("*"), Path(first["yaml"])])
    stamps = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    assert convert_coco(src, dst) == first
    assert sorted([*dst.rglob("*"), Path(first["yaml"])]) == files
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == stamps
    make_source(src, anns[:1])
    assert convert_coco(src, dst)["splits"]["train"]["boxes"]["car"] == 0
    assert read_labels(dst) == ["0 0.333333 0.400000 0.333333 0.400000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.yaml", "src"]  # no temporary folder left


LAYOUTS = {  # layout -> (JSON, its image folder) per split
    "split folders": [("train/labels.json", "train"), ("val/labels.json", "val")],
    "COCO's own": [("annotations/instances_train2017.json", "train2017")],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_json_per_split(tmp_path, layout):
    src, dst = tmp_path / "src", tmp_path / "out"
    for json_name, folder in LAYOUTS[layout]:
        make_source(src, [annotation(1, 1, [SQUARE])], images=((folder, f"{folder}.jpg"),), json_name=json_name)
    summary = convert_coco(src, dst)
    assert summary["annotations"] == [json_name for json_name, _ in LAYOUTS[layout]]
    for split, (_, folder) in zip(summary["splits"], LAYOUTS[layout], strict=True):
        assert read_mask(dst, folder, split).sum() == 16 and summary["splits"][split]["boxes"]["person"] == 1


BAD_INPUTS = {  # case -> (annotations, categories, names, error type, message after the JSON's path)
    "unknown category id": ([annotation(1, 99, [SQUARE])], None, None, ValueError, "category_id .*: 99"),
    "unknown name": ([annotation(1, 1, [SQUARE])], None, ["persn"], ValueError, "persn' \\(close: person"),
    "empty segmentation": ([annotation(7, 1, [])], None, None, ValueError, "annotation 7 has an empty segmentation"),
    "two-point polygon": ([annotation(7, 1, [[1, 1, 3, 3]])], None, None, ValueError, "annotation 7 has an empty"),
    "id with two names": ([], [*CATEGORIES, {"id": 3, "name": "bus"}], None, ValueError, "id 3 is both 'car'"),
    "category without name": ([], [*CATEGORIES, {"id": 4}], None, ValueError, "has no integer 'id' and non-empty"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_naming_the_file_and_leaves_nothing(tmp_path, case):
    annotations, categories, names, error, message = BAD_INPUTS[case]
    src = make_source(tmp_path / "src", annotations, categories=categories)
    with pytest.raises(error, match=re.escape(str(src / "labels.json")) + ": .*" + message):
        convert_coco(src, tmp_path / "out", names=names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_images_and_a_failure_while_writing_leave_nothing(tmp_path):
    src = make_source(tmp_path / "src", [], images=(("train", "a.jpg"), ("train", "b.jpg"), ("train", "c.jpg")))
    (src / "train/b.jpg").unlink()
    (src / "train/c.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{src / 'labels.json'}: 2 listed image(s) not found")):
        convert_coco(src, tmp_path / "out")
    make_source(src, [], images=(("train", "a.jpg"), ("train", "b.jpg")))
    Image.new("RGB", (W + 1, H)).save(src / "train/b.jpg")  # found after a.jpg is written
    with pytest.raises(ValueError, match="b.jpg: image is 13x10 px but .*labels.json says 12x10"):
        convert_coco(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_command_line(tmp_path):
    assert coco_names("hw2") == list(DET_NAMES) and coco_names(None) is None
    assert coco_names("person, dining table") == ["person", "dining table"]
    voc = coco_names("voc")  # every VOC class is a COCO category, six of them under another name
    coco = set(YAML.load(ULTRALYTICS_CFG / "datasets/coco.yaml")["names"].values())
    assert [n.partition(":")[0] for n in voc] == list(SEG_NAMES[1:]) and "aeroplane:airplane" in voc
    assert {n.partition(":")[2] or n for n in voc} <= coco
    src = make_source(tmp_path / "src", [annotation(1, 3, [SQUARE])])
    summary = run(["data", "coco", f"src={src}", f"dst={tmp_path / 'out'}", "names=car,dog", "others=ignore"])
    assert summary["names"] == ["car", "dog"] and summary["others"] == "ignore"
    with pytest.raises(SyntaxError, match="valid keys"):
        run(["data", "coco", f"src={src}", f"dst={tmp_path / 'out'}", "classes=car"])


@pytest.mark.skipif(not MINI_COCO.is_dir(), reason=f"real mini_coco data not found at {MINI_COCO} (not in the repo)")
def test_real_mini_coco_box_counts(tmp_path):
    summary = convert_coco(MINI_COCO, tmp_path / "mini_coco", names=list(DET_NAMES))
    for split, readme in README.items():
        counts = summary["splits"][split]
        crowd = {name: CROWD[split].get(name, 0) for name in DET_NAMES}
        assert counts["crowd_boxes_dropped"] == crowd
        assert {name: counts["boxes"][name] + crowd[name] for name in DET_NAMES} == readme
    assert [summary["splits"][s]["images"] for s in README] == [240, 60]
    assert [summary["splits"][s]["images_without_annotation"] for s in README] == [3, 0]


@pytest.mark.parametrize(
    "damage, reason", [("truncate", "unreadable image .*truncated"), ("empty", "is an empty file")]
)
def test_a_truncated_or_empty_image_is_one_clear_error(tmp_path, damage, reason):
    src = make_source(tmp_path / "src", [annotation(1, 1, [SQUARE])])
    image = src / "train/a.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (H * 20, W * 20, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image, quality=95)  # read before its size is compared with the JSON's
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with pytest.raises(ValueError, match=f"{re.escape(str(image))}: {reason}"):
        convert_coco(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
