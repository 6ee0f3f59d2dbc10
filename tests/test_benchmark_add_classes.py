"""benchmarks.add_classes: the run plan, the stage classes, the group scores and verdicts, quick mode end to end."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from ultralytics.utils import YAML, torch_utils

from benchmarks import add_classes
from yolo_unified.data.prepare import DET_NAMES, SEG_NAMES
from yolo_unified.data.synthetic import make_synthetic


def test_run_plan_starts_with_seed_zero_of_every_section_and_old_before_the_runs_from_it(tmp_path):
    plan = add_classes.run_plan({"synth": ["det", "cls"], "hw2": ["seg"]}, 2)
    names = [add_classes.run_name(*p) for p in plan]
    assert len(plan) == 24 and names[:4] == [f"synth_det_{m}_seed0" for m in add_classes.METHODS]
    assert [p[:2] for p in plan[::4][:3]] == [("synth", "det"), ("synth", "cls"), ("hw2", "seg")]  # seed 0 first
    assert {p[3] for p in plan[:12]} == {0} and {p[3] for p in plan[12:]} == {1}

    data = {"full": "full.yaml", "old": "old.yaml", "new": "new.yaml"}
    recipe = {**YAML.load(add_classes.RECIPE), "bn_freeze": True}  # a trial recipe (recipe=<YAML>)
    cfg = {m: add_classes.run_cfg(("hw2", "seg", m, 1), data, tmp_path, "w.pt", recipe) for m in add_classes.METHODS}
    assert [cfg[m]["data"] for m in add_classes.METHODS] == ["old.yaml", "new.yaml", "new.yaml", "full.yaml"]
    assert [cfg[m]["epochs"] for m in add_classes.METHODS] == [30, 20, 20, 30]
    assert cfg["finetune"]["model"] == cfg["recipe"]["model"] == str(tmp_path / "hw2_seg_old_seed1/weights/best.pt")
    assert cfg["old"]["pretrained"] == cfg["joint"]["pretrained"] == "w.pt" and "pretrained" not in cfg["recipe"]
    assert "old_labels" in cfg["recipe"] and "old_distill" in cfg["recipe"] and "old_labels" not in cfg["finetune"]
    assert cfg["recipe"]["bn_freeze"] and "bn_freeze" not in cfg["finetune"]
    assert cfg["old"]["replay"] == {"size": recipe["replay"]["size"]}  # stage 1 keeps the exemplars the recipe replays
    free = {k: v for k, v in recipe.items() if k != "replay"}  # an exemplar-free recipe: stage 1 keeps none
    assert "replay" not in add_classes.run_cfg(("hw2", "seg", "old", 1), data, tmp_path, "w.pt", free)
    assert cfg["old"]["imgsz"] == 320 and cfg["old"]["seed"] == 1 and cfg["old"]["optimizer"] == "AdamW"
    synth = add_classes.run_cfg(("synth", "cls", "old", 0), data, tmp_path, None, recipe)
    assert synth["imgsz"] == 96 and synth["mosaic"] == 0 and synth["workers"] == 0 and synth["epochs"] == 30


def test_stage_classes_of_voc_15_plus_5_and_det_5_plus_5():
    seg, det = dict(enumerate(SEG_NAMES)), dict(enumerate(DET_NAMES))
    first, second = add_classes.stage_classes("hw2", "seg", seg)
    assert first == list(SEG_NAMES[1:16]) and first[0] == "aeroplane" and first[-1] == "person"
    assert second == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert add_classes.class_groups("seg", seg, first, second)["old"] == list(SEG_NAMES[:16])  # with background
    first, second = add_classes.stage_classes("hw2", "det", det)
    assert first == ["person", "car", "dog", "cat", "chair"] and second == list(DET_NAMES[5:])
    assert add_classes.stage_classes("synth", "cls", {0: "circle", 1: "rectangle", 2: "triangle"}) == (
        ["circle", "rectangle"],
        ["triangle"],
    )


def test_group_scores_cells_and_verdicts_on_hand_made_numbers():
    groups = {"old": ["background", "a", "b"], "new": ["c"], "all": ["background", "a", "b", "c"]}
    scores = add_classes.group_scores({"background": 0.9, "a": 0.6, "b": 0.3, "c": 0.2}, groups)
    assert scores == pytest.approx({"old": 0.6, "new": 0.2, "all": 0.5})
    assert add_classes.group_scores({"background": 0.9, "a": 0.6}, groups) == {"old": 0.75, "new": None, "all": None}

    def run(method, seed, old, new=None, all_=None):
        final = {g: {"value": x, "ci95": [x - 0.1, x + 0.1]} if x is not None else None
                 for g, x in zip(add_classes.GROUPS, (old, new, all_), strict=True)}  # fmt: skip
        return {"section": "synth", "task": "det", "method": method, "seed": seed, "final": final, "n_images": 32}

    runs = [run("old", 0, 0.9), run("old", 1, 0.7), run("recipe", 0, 0.6, 0.5, 0.55), run("recipe", 1, 0.8, 0.7, 0.75)]
    runs += [run("joint", 0, 0.9, 0.8, 0.85), run("joint", 1, 0.9, 0.6, 0.75)]
    results = {"runs": {str(i): r for i, r in enumerate(runs)}, "classes": {"synth": {"det": groups}}}
    # old 0.8, recipe old 0.7: a 12.5% loss; recipe all 0.65 of joint all 0.8: 81.25%
    assert add_classes.verdict_lines(results, "synth", "det") == [
        "- old classes lose 12.5% (target <= 5%): missed",
        "- all classes reach 81.2% of training all at once (target >= 90%): missed",
    ]
    old_runs = add_classes.seed_runs(results, "synth", "det", "old")
    assert add_classes.cell(old_runs, "old") == "**0.800 ± 0.100** (0.900 [0.800, 1.000]; 0.700 [0.600, 0.800])"
    assert add_classes.cell(old_runs, "new") == "-" and add_classes.cell(old_runs[:1], "old") == "0.900 [0.800, 1.000]"
    table = "\n".join(add_classes.task_table(results, "synth", "det"))
    assert "| old (background, a, b) | new (c) | all |" in table and "| finetune |" not in table


def test_trivial_scores_on_a_hand_made_mask(tmp_path):
    """Background everywhere: the background's IoU is its share of the labelled pixels (255 left out); classes with
    val pixels score 0, a class without any is left out; detection 0; classification chance."""
    for folder in ("seg/images/val", "seg/masks/val"):
        (tmp_path / folder).mkdir(parents=True)
    mask = np.array([[0] * 4, [0] * 4, [1, 1, 1, 1], [2, 2, 255, 255]], np.uint8)  # 8 background, 4 + 2, 2 ignored
    cv2.imwrite(str(tmp_path / "seg/masks/val/a.png"), mask)
    cv2.imwrite(str(tmp_path / "seg/images/val/a.png"), np.zeros((4, 4, 3), np.uint8))
    names = {0: "background", 1: "a", 2: "b", 3: "c"}  # c: no val pixels
    seg = {"train": "seg/images/val", "val": "seg/images/val", "masks_dir": "masks", "names": names}
    YAML.save(tmp_path / "data.yaml", {"path": str(tmp_path), "seg": seg})
    groups = {"old": ["background", "a"], "new": ["b", "c"], "all": ["background", "a", "b", "c"]}
    trivial = add_classes.trivial_scores("seg", str(tmp_path / "data.yaml"), groups)
    assert trivial == pytest.approx({"old": 8 / 14 / 2, "new": 0.0, "all": 8 / 14 / 3})
    assert add_classes.trivial_scores("det", "", groups) == {"old": 0.0, "new": 0.0, "all": 0.0}
    assert add_classes.trivial_scores("cls", "", groups) == pytest.approx({g: 0.25 for g in add_classes.GROUPS})


def test_the_hw2_section_is_skipped_without_its_data(tmp_path):
    assert add_classes.section_data("hw2", {"hw2": str(tmp_path / "absent")}, tmp_path, ["seg"]) is None


def test_quick_synth_section_of_one_task_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_utils, "get_flops", lambda *args, **kwargs: 0.0)  # only printed; a fifth of the time
    data = make_synthetic(tmp_path / "synth", n_train=12, n_val=8, imgsz=64, seed=1)
    out = tmp_path / "out"
    argv = ["quick=True", "seeds=1", "sections=synth", "tasks=cls", f"synth={data}", f"out={out}", "n_boot=20"]
    results = add_classes.main(argv)
    assert list(results["runs"]) == [f"synth_cls_{m}_seed0" for m in add_classes.METHODS]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs["synth_cls_old_seed0"]["final"]["new"] is None  # the old model lacks triangle
    assert set(runs["synth_cls_old_seed0"]["per_class"]) == {"circle", "rectangle"}
    for name in ("finetune", "recipe", "joint"):
        run = runs[f"synth_cls_{name}_seed0"]
        assert set(run["per_class"]) == {"circle", "rectangle", "triangle"} and run["n_images"] == 8
        for group in add_classes.GROUPS:
            lo, hi = run["final"][group]["ci95"]
            assert 0 <= lo <= hi <= 1
    summary = (out / "summary.md").read_text()
    assert "| old (circle, rectangle) | new (triangle) | all |" in summary and "| recipe |" in summary
    assert "old classes lose" in summary and "- command: `python -m benchmarks.add_classes quick=True" in summary
    assert "| trivial: chance | 0.333 | 0.333 | 0.333 |" in summary

    # a re-run keeps the finished, scored runs as recorded, and a run whose folder is gone
    Path(out / "synth_cls_joint_seed0").rename(tmp_path / "joint-moved")
    again = add_classes.main(argv)
    assert again["runs"] == results["runs"] and len(again["invocations"]) == 2

    # synth_val: the same data with a longer val split; the finished runs are scored again on it, not retrained
    trained = (out / "synth_cls_recipe_seed0" / "weights" / "best.pt").stat().st_mtime_ns
    longer = add_classes.main([*argv, "synth_val=20"])["runs"]
    assert (out / "synth_cls_recipe_seed0" / "weights" / "best.pt").stat().st_mtime_ns == trained
    assert (
        longer["synth_cls_recipe_seed0"]["n_images"] == 20
        and longer["synth_cls_joint_seed0"] == runs["synth_cls_joint_seed0"]
    )
    assert longer["synth_cls_recipe_seed0"]["scored_on"].endswith("synth-val20.yaml")
    assert set(longer["synth_cls_old_seed0"]["per_class"]) == {"circle", "rectangle"}
    assert len(add_classes.main([*argv, "synth_val=20"])["invocations"]) == 4  # scored on this val already: kept
    with pytest.raises(ValueError, match="not made by the synthetic generator"):
        add_classes.longer_val(str(out / "data" / "synth-cls-new.yaml"), 20)
