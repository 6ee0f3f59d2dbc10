"""benchmarks.shared: the data it builds from mini_coco and HW2, the timing ratio, the run plan, quick mode."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import shared
from benchmarks.common import REPO
from yolo_unified.data.config import image_files, load_data_config, task_data
from yolo_unified.data.prepare import SEG_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2
DATA = (REPO / "../shared/data").resolve()
needs_data = pytest.mark.skipif(
    not (DATA / "mini_coco").is_dir() or not (DATA / "hw2").is_dir(),
    reason=f"real mini_coco and hw2 data not found in {DATA} (not in the repo)",
)


def test_timing_ratio_per_round_and_methods_timed_before_are_kept(tmp_path, monkeypatch):
    seconds = iter([[10.0, 12.0], [20.0, 22.0], [10.0, 10.0], [18.0, 18.0]])  # shared, two, shared, two
    calls = []

    def fake(cfg, data, save_dir):
        calls.append((cfg["balance"], cfg["epochs"], data))
        return next(seconds)

    monkeypatch.setattr(shared, "epoch_seconds", fake)
    done = {"upgrad": {"ratio": 1.1}}
    args = {"timing_rounds": 2, "timing_epochs": 2, "timing_balance": "fixed,upgrad"}
    result = shared.timing(args, {"balance": "x", "epochs": 9}, {"shared": "s.yaml", "two": "t.yaml"}, tmp_path, done)
    assert calls == [("fixed", 2, "s.yaml"), ("fixed", 2, "t.yaml")] * 2  # in alternation; upgrad not re-timed
    assert result["fixed"]["ratios"] == pytest.approx([21 / 11, 1.8]) and result["upgrad"] == done["upgrad"]
    assert result["fixed"]["ratio"] == pytest.approx((21 / 11 + 1.8) / 2)


def test_run_plan_starts_with_seed_zero_of_every_section():
    data = dict.fromkeys(("shared", "two", "mixed", "hw2", "merged"), "x.yaml")
    plan = shared.run_plan(data, 2, list(shared.SECTIONS))
    names = [name for _, name, _, _ in plan]
    assert names[:10] == [
        "shared_seed0", "two_seed0", "det_alone_seed0", "seg_alone_seed0", "mixed_seed0", "cls_alone_seed0",
        "hw2_det_seed0", "merged_det_seed0", "hw2_seg_seed0", "merged_seg_seed0",
    ]  # fmt: skip
    assert len(plan) == 20 and all(keys["seed"] == int(name[-1]) for _, name, keys, _ in plan)
    alone = {name: keys for _, name, keys, _ in plan if "task" in keys}
    assert alone["merged_seg_seed1"] == {"data": "x.yaml", "task": "seg", "seed": 1}
    assert shared.run_keys({"joint": True, "epochs": 3}, alone["merged_seg_seed1"])["joint"] is False
    recipe = {"joint": True, "imgsz": 320, "task_args": {"cls": {"imgsz": 160}}}
    assert shared.run_keys(recipe, alone["cls_alone_seed1"])["imgsz"] == 160  # trained at the size it is scored at
    assert shared.run_keys(recipe, alone["hw2_seg_seed1"])["imgsz"] == 320
    assert [s for s, *_ in shared.run_plan(data, 1, ["merged"])] == ["merged"] * 4


@pytest.mark.slow
@needs_data
def test_quick_mini_coco_section_end_to_end(tmp_path):
    out = tmp_path / "out"
    argv = ["quick=True", "seeds=1", "sections=mini_coco", f"out={out}", "n_boot=50"]
    results = shared.main(argv)
    runs = results["runs"]
    assert list(runs) == ["shared_seed0", "two_seed0", "det_alone_seed0", "seg_alone_seed0"]
    assert set(runs["shared_seed0"]["final"]) == {"det", "seg"} and set(runs["det_alone_seed0"]["final"]) == {"det"}
    for run in runs.values():
        for score in run["final"].values():
            assert score["n_images"] == 60 and score["ci95"][0] <= score["value"] <= score["ci95"][1]
        assert run["seconds_per_epoch"] > 0 and run["peak_rss_mb"] > 0
    assert json.loads((out / "results.json").read_text())["runs"].keys() == runs.keys()
    summary = (out / "summary.md").read_text()
    assert "| two_seed0 |" in summary and "All-background prediction" in summary

    # the two forms hold the same labelled images; HW2 + mini_coco merged by class name, scored on HW2's val
    data = {name: load_data_config(out / "data" / f"{name}.yaml") for name in ("shared", "two", "merged")}
    for task in ("det", "seg"):
        shared_images = image_files(task_data(data["shared"], task)["train"])
        assert shared_images == image_files(data["two"]["tasks"][task]["train"]) and len(shared_images) == 240
    hw2 = load_data_config(REPO / "datasets/hw2.yaml")
    merged = data["merged"]["tasks"]
    assert merged["seg"]["names"] == dict(enumerate(SEG_NAMES)) and merged["seg"]["val"] == hw2["tasks"]["seg"]["val"]
    seg_train = image_files(merged["seg"]["train"])
    assert len(seg_train) == 480 and len({f.name for f in seg_train}) == 480  # no image of HW2 seg train among them
    person = SEG_NAMES.index("person")  # 15 in VOC, 1 in the ten-class conversion
    coco_masks = [Path(str(f).replace("/images/", "/masks/")).with_suffix(".png") for f in seg_train[240:]]
    assert any((np.asarray(Image.open(m)) == person).any() for m in coco_masks[:20])
