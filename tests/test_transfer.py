"""The report's accuracy matrix: units, BWT / FWT, the class-group table, and what write_report writes (no training:
hand-made protocol states)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from yolo_unified.workflows.report import run_summary, write_report
from yolo_unified.workflows.scores import (
    Unit,
    accuracy_matrix,
    class_groups,
    protocol_transfer,
    transfer,
    units,
    verdict,
)

NAN = math.nan


def det(map50: float, **per_class: float) -> dict:
    """Detection scores: mAP50 and, when given, the per-class mAP50."""
    return {
        "metrics/mAP50(B)": map50,
        "metrics/mAP50-95(B)": map50 / 2,
        **({"per_class": per_class} if per_class else {}),
    }


def record(task: str, scores: dict, classes: dict | None = None, **own: float) -> dict:
    """A stage record as Protocol.record_stage writes it (``seg+det``: a joint stage)."""
    tasks = task.split("+")
    rec = {"task": task, "scores": scores, "weights": "w.pt", "save_dir": "nowhere", "kept_weights": True}
    if len(tasks) > 1:
        rec.update(tasks=tasks, own_scores={t: own[t] for t in tasks})
    else:
        rec["own_score"] = own[task]
    return {**rec, **({"classes": classes} if classes else {})}


def add_classes_state() -> dict:
    """seg+det jointly (det: car, person), then det adds bike (its data labels person too), then cls."""
    return {
        "stages": [
            record("seg+det", {"seg": {"metrics/mIoU": 0.60}, "det": det(0.50, car=0.6, person=0.4)},
                   {"seg": ["background", "road"], "det": ["car", "person"]}, seg=0.60, det=0.50),
            record("det", {"seg": {"metrics/mIoU": 0.54}, "det": det(0.55, car=0.5, person=0.3, bike=0.7)},
                   {"det": ["person", "bike"]}, det=0.55),
            record("cls", {"seg": {"metrics/mIoU": 0.51}, "det": det(0.50, car=0.45, person=0.3, bike=0.6),
                           "cls": {"metrics/accuracy_top1": 0.80}}, {"cls": ["a", "b"]}, cls=0.80),
        ]
    }  # fmt: skip


def baselines_state() -> dict:
    """The same stages with chain=False: each scored on its own tasks only."""
    return {
        "stages": [
            record("seg+det", {"seg": {"metrics/mIoU": 0.62}, "det": det(0.50, car=0.6, person=0.4)},
                   {"seg": ["background", "road"], "det": ["car", "person"]}, seg=0.62, det=0.50),
            record("det", {"det": det(0.65, person=0.5, bike=0.8)}, {"det": ["person", "bike"]}, det=0.65),
            record("cls", {"cls": {"metrics/accuracy_top1": 0.75}}, {"cls": ["a", "b"]}, cls=0.75),
        ]
    }  # fmt: skip


def test_bwt_and_fwt_of_a_3x3_matrix():
    R = np.array([[0.8, NAN, NAN], [0.6, 0.5, NAN], [0.5, 0.4, 0.9]])
    # BWT: units 0 and 1 (learned before the last stage): (0.5 - 0.8 + 0.4 - 0.5) / 2 = (-0.3 - 0.1) / 2 = -0.2
    # FWT: units 1 and 2 (learned after the first stage): (0.5 - 0.6 + 0.9 - 0.7) / 2 = (-0.1 + 0.2) / 2 = +0.05
    result = transfer(R, [0, 1, 2], [0.85, 0.6, 0.7])
    assert result["BWT"] == pytest.approx(-0.2) and result["FWT"] == pytest.approx(0.05)
    assert transfer(R, [0, 1, 2])["FWT"] is None  # no baselines run
    assert transfer(R[:1, :1], [0], [0.85]) == {"BWT": None, "FWT": None}  # one stage: nothing before or after it
    R[2, 0] = NAN  # a missing score leaves its pair out: BWT = 0.4 - 0.5
    assert transfer(R, [0, 1, 2])["BWT"] == pytest.approx(-0.1)


def test_units_split_a_task_learned_over_stages_into_its_class_groups():
    state = add_classes_state()
    assert units(state) == [
        Unit("seg", "seg", 0),
        Unit("det 1", "det", 0, ("car", "person")),
        Unit("det 2", "det", 1, ("bike",)),  # person, known since stage 1, stays in det 1
        Unit("cls", "cls", 2),
    ]
    names, R = accuracy_matrix(state)
    assert names == ["seg", "det 1", "det 2", "cls"]
    # det 1 = mean(car, person): 0.5 / 0.4 / 0.375; det 2 = bike
    expected = [[0.60, 0.5, NAN, NAN], [0.54, 0.4, 0.7, NAN], [0.51, 0.375, 0.6, 0.80]]
    np.testing.assert_allclose(R, expected)
    del state["stages"][2]["scores"]["det"]["per_class"]  # per_class not recorded: the class groups have no score
    assert np.isnan(accuracy_matrix(state)[1][2, 1:3]).all()


def test_a_protocol_without_classes_has_one_unit_per_task():
    state = add_classes_state()
    for s in state["stages"]:
        del s["classes"]
    del state["stages"][1]  # det learned once: scored by mAP50, per_class or not
    names, R = accuracy_matrix(state)
    assert names == ["seg", "det", "cls"]
    np.testing.assert_allclose(R, [[0.60, 0.50, NAN], [0.51, 0.50, 0.80]])
    assert class_groups(state, 0.05) == []


def test_class_group_table_gives_old_new_all_and_the_old_classes_forgetting():
    (group,) = class_groups(add_classes_state(), 0.05)  # stage 2 adds bike to det; cls and seg add nothing
    assert (group["stage"], group["unit"]) == (1, "det 2")
    # after stage 2: old = mean(car 0.5, person 0.3) = 0.4; new = bike 0.7; all = (0.5 + 0.3 + 0.7) / 3 = 0.5
    # old after stage 1 = mean(0.6, 0.4) = 0.5, so a relative drop of (0.5 - 0.4) / 0.5 = 20%, 10 points
    values = [group[k] for k in ("old", "new", "all", "old_before", "relative", "points")]
    assert values == pytest.approx([0.4, 0.7, 0.5, 0.5, 0.2, 10.0])
    assert group["pass"] is False
    assert class_groups(add_classes_state(), 0.25)[0]["pass"] is True
    assert verdict(add_classes_state(), 0.05) == "FAIL"  # the old classes' drop fails the protocol
    summary = run_summary(Path("."), add_classes_state(), 0.05)
    assert "  det  stage 2's old classes 0.400  forgetting +20.0%  FAIL  (new 0.700)" in summary


def test_transfer_of_a_protocol_against_its_baselines_run():
    # BWT over seg, det 1, det 2: (0.51 - 0.60 + 0.375 - 0.5 + 0.6 - 0.7) / 3 = -0.315 / 3 = -0.105
    # FWT over det 2, cls against the baselines' own units (det 2 = bike 0.8, cls 0.75): (-0.1 + 0.05) / 2 = -0.025
    result = protocol_transfer(add_classes_state(), baselines_state())
    assert result["BWT"] == pytest.approx(-0.105) and result["FWT"] == pytest.approx(-0.025)


def test_write_report_adds_the_accuracy_matrix_transfer_and_class_groups(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/protocol.json").write_text(json.dumps(baselines_state()))
    md = write_report(tmp_path, add_classes_state(), baselines=str(tmp_path / "base"))
    assert md == (tmp_path / "forgetting.md").read_text() and "| forgetting |" in md  # the existing table stays
    assert "## Accuracy matrix" in md and "|  | seg | det 1 | det 2 | cls |" in md
    assert "| after stage 2 (det) | 0.5400 | 0.4000 | 0.7000 |  |" in md  # blank: cls not learned yet
    assert "BWT: -0.1050; FWT: -0.0250" in md
    assert "## Class groups" in md
    assert "| 2 (det) | det 2 | 0.4000 | 0.7000 | 0.5000 | 0.5000 | +20.00% (+10.00 pts) FAIL |" in md
    csv_rows = (tmp_path / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_rows[0] == ",seg,det 1,det 2,cls" and csv_rows[1] == "after stage 1 (seg+det),0.6000,0.5000,,"
    assert (tmp_path / "accuracy_matrix.png").is_file()
    md = write_report(tmp_path, add_classes_state())
    assert "BWT: -0.1050; FWT: needs a baselines run (baselines=)" in md


def test_a_report_without_added_classes_has_no_class_group_table(tmp_path):
    state = {"stages": add_classes_state()["stages"][:1]}
    md = write_report(tmp_path, state)
    assert "## Accuracy matrix" in md and "## Class groups" not in md
    assert "BWT: n/a (one stage); FWT: needs a baselines run (baselines=)" in md


def test_the_summary_gives_bwt_and_fwt_with_the_runs_baselines(tmp_path):
    state = add_classes_state()
    assert "  transfer  BWT -0.105  (accuracy" in run_summary(tmp_path, state, 0.05)  # FWT unknown: not shown
    (tmp_path / "base").mkdir()
    (tmp_path / "base/protocol.json").write_text(json.dumps(baselines_state()))
    state["config"] = {"baselines": str(tmp_path / "base")}
    assert "  transfer  BWT -0.105  FWT -0.025  (accuracy" in run_summary(tmp_path, state, 0.05)
    assert "transfer" not in run_summary(tmp_path, {"stages": state["stages"][:1]}, 0.05)  # one stage: no BWT
