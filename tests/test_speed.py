"""The benchmark mode at a tiny size: every row measured, the table printed and saved, threads restored."""

import json
from pathlib import Path

import pytest
import torch
from ultralytics.utils import torch_utils

from yolo_unified.cli import run
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.nn import UnifiedModel
from yolo_unified.speed import Benchmark, machine_info

NAMES = {"seg": {0: "background", 1: "thing"}, "det": {0: "thing"}, "cls": {0: "a", 1: "b"}}


def test_benchmark_measures_every_row_and_saves_the_table(synth_yaml, tmp_path):
    """One run (timing does not depend on the weights: an untrained checkpoint will do), INT8 calibrated on data=."""
    weights = tmp_path / "untrained.pt"
    names = task_names(load_data_config(synth_yaml))  # heads for the calibration data's classes
    torch.save({"model": UnifiedModel(task_names=names, verbose=False).half(), "train_args": {"imgsz": 64}}, weights)
    threads = torch.get_num_threads(), torch_utils.NUM_THREADS
    out = run(["benchmark", f"model={weights}", f"data={synth_yaml}", "runs=3", "warmup=1", "threads=1",
               f"project={tmp_path}"])  # fmt: skip
    assert (torch.get_num_threads(), torch_utils.NUM_THREADS) == threads  # restored after the run
    assert out["machine"]["threads"] == 1 and out["machine"]["imgsz"] == 64  # imgsz from the checkpoint
    rows = {(r["name"].split(" (")[0], r["runtime"]): r for r in out["rows"]}
    separate = ["YOLOv8n detector", "semantic model, YOLOv8n backbone", "YOLOv8n-cls"]
    unified = ("PyTorch eager", "ONNX Runtime", "TorchScript", "OpenVINO fp32", "ONNX Runtime INT8", "OpenVINO INT8")
    keys = [*(("unified model", runtime) for runtime in unified), ("backbone alone", "PyTorch eager"),
            *((name, runtime) for name in separate for runtime in ("PyTorch eager", "ONNX Runtime"))]  # fmt: skip
    for key in keys:
        assert key in rows and rows[key]["params"] > 0 and rows[key]["gflops"] > 0, key
    for runtime in ("PyTorch eager", "ONNX Runtime"):
        summed = rows[("three separate Ultralytics models, summed", runtime)]
        parts = [rows[(name, runtime)] for name in separate]
        assert summed["params"] == sum(r["params"] for r in parts) > 3 * rows[("unified model", runtime)]["params"]
        assert summed["median_ms"] == pytest.approx(sum(r["median_ms"] for r in parts))
    assert any("argmax" in name for name, _ in rows) and any("end to end" in name for name, _ in rows)
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in out["rows"])
    assert rows[("backbone alone", "PyTorch eager")]["params"] < rows[("unified model", "PyTorch eager")]["params"]
    overhead = "full model / backbone latency (PyTorch eager, timed in alternation)"
    int8_ratios = ("ONNX Runtime fp32 / fastest INT8 latency (timed in alternation)",
                   "fastest INT8 / three separate models summed (ONNX Runtime fp32)")  # fmt: skip
    slowest = "slowest p90 of the unified model (ms)"
    assert set(out["ratios"]) == {overhead, "ONNX Runtime / PyTorch eager latency", slowest, *int8_ratios}
    assert 1.0 < out["ratios"][overhead] < 10.0  # the head adds work, but not ten backbones' worth
    speedup, share = (out["ratios"][k] for k in int8_ratios)
    assert speedup > 0 and 0 < share < 1
    own = [r["p90_ms"] for r in out["rows"] if "Ultralytics" not in r["name"]]  # the separate models left out
    assert out["ratios"][slowest] == round(max(own), 3)
    assert set(out["exported"]) == {"ONNX Runtime", "OpenVINO fp32", "ONNX Runtime INT8", "OpenVINO INT8"}
    assert out["exported"]["ONNX Runtime INT8"].endswith("_int8.onnx")
    assert all(Path(f).exists() for f in out["exported"].values())  # quantizing deletes its fp32 source: not ours
    saved = json.loads((tmp_path / "benchmark" / "benchmark.json").read_text())
    assert saved["rows"] == out["rows"]
    table = (tmp_path / "benchmark" / "benchmark.md").read_text()
    assert "| model | runtime |" in table and "1 threads" in table and table.count("\n| ") >= len(out["rows"]) + 4


def test_int8_rows_are_left_out_without_calibration_data(tmp_path, monkeypatch, logged):
    """No data= and none in the checkpoint: the INT8 rows are left out with a warning, OpenVINO fp32 measured."""
    weights = tmp_path / "untrained.pt"
    torch.save({"model": UnifiedModel(task_names=NAMES, verbose=False), "train_args": {"imgsz": 64}}, weights)
    bench = Benchmark(str(weights), None, None, 1, 0, 1, tmp_path, None)
    monkeypatch.setattr(bench, "measure", lambda name, runtime, make, size=None: bench.rows.append(runtime))
    bench.measure_int8("unified model", (1, 1.0))
    assert bench.rows == ["OpenVINO fp32"] and "INT8 rows left out" in logged.text


def test_the_machine_is_described_once_for_the_product_and_the_benchmarks():
    machine = machine_info()
    assert set(machine) == {"cpu", "logical_cores", "torch", "ultralytics", "python"}
    assert machine["torch"] == torch.__version__ and machine["logical_cores"] >= 1
