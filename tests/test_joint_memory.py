"""The joint step's memory benchmark: a step measured in this process, the table, and a bad method name."""

import pytest

from benchmarks.joint_memory import BENCHMARK, main, measure, random_batches


def test_random_batches_have_every_tasks_labels():
    batches = random_batches(32, 2)
    det = batches["det"][0]
    assert det["img"].shape == (2, 3, 32, 32) and det["bboxes"].shape == (8, 4) and det["batch_idx"].tolist() == [
        0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0
    ]  # fmt: skip
    assert batches["seg"][0]["semantic_mask"].shape == (2, 32, 32) and batches["cls"][0]["cls"].shape == (2,)


def test_a_gradient_level_step_is_measured_and_tabled():
    step = measure("upgrad", 32, 2, 1)
    assert step["peak_mb"] > 0 and step["step_s"] > 0
    assert step["added_mb"] is None or 0 <= step["added_mb"] <= step["peak_mb"]  # None: no /proc to reset
    results = {
        "command": "python -m benchmarks.joint_memory",
        "date": "2026-12-07 20:00 UTC",
        "commit": "abc",
        "machine": {"cpu": "x", "logical_cores": 2, "torch": "t", "ultralytics": "u", "python": "p"},
        "settings": {"imgsz": 32, "batch": 2, "steps": 1, "threads": 1},
        "methods": {"upgrad": {"kind": "gradient", **step}},
    }
    table = BENCHMARK.summary(results)
    assert "| upgrad | gradient |" in table and "2 images at 32 px, 1 steps on 1 threads" in table
    assert table.startswith("# Peak memory of a joint step") and "- date: 2026-12-07 20:00 UTC, commit abc" in table


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match=r"unknown \['nope'\]"):
        main(["methods=fixed,nope"])
