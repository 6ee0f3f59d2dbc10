"""Accuracy of a unified checkpoint in PyTorch, ONNX Runtime and OpenVINO, fp32 and INT8 (calibrated on the val
images of every task), each exported with a dynamic input size and scored as ``yolo-unified val`` scores it; OpenVINO
runs fp32 at its CPU plugin's default precision (``openvino_precision``). Exports are reused by a re-run."""

from __future__ import annotations

import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, colorstr

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import METRIC_NAME, Benchmark, Report, repo_relative, run_benchmark, score_text, table
from yolo_unified.common import TASKS
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.model import UnifiedYOLO

RUNTIMES = {  # label -> (export format, quantize); PyTorch runs the checkpoint itself
    "PyTorch": (None, None),
    "ONNX Runtime fp32": ("onnx", None),
    "ONNX Runtime INT8": ("onnx", 8),
    "OpenVINO fp32": ("openvino", None),
    "OpenVINO INT8": ("openvino", 8),
}


def exported(weights: str, out: Path, fmt: str | None, quantize: int | None, data: str, imgsz: int) -> str:
    """The checkpoint exported to `fmt` (dynamic input size) inside `out`, reusing an earlier export."""
    if fmt is None:
        return weights
    out.mkdir(parents=True, exist_ok=True)
    copy = out / "best.pt"
    if not copy.is_file():
        shutil.copy(weights, copy)
    name = {("onnx", None): "best.onnx", ("onnx", 8): "best_int8.onnx"}.get((fmt, quantize))
    name = name or ("best_int8_openvino_model" if quantize else "best_openvino_model")
    if (out / name).exists():
        return str(out / name)
    args = {"format": fmt, "imgsz": imgsz, "dynamic": True, "batch": 1, "data": data}
    return UnifiedYOLO(str(copy)).export(**args, **({"quantize": quantize} if quantize else {}))


def openvino_precision() -> str:
    """The precision OpenVINO's CPU plugin runs fp32 models at by default on this machine (f32, bf16, f16)."""
    import openvino

    return str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def runtime_scores(
    weights: str, data: str, imgsz: dict[str, int], out: Path, n_boot: int = 1000
) -> dict[str, dict[str, Any]]:
    """Every task's bootstrapped score in every runtime of `RUNTIMES` (`imgsz`: each task's image size)."""
    names = task_names(load_data_config(data))
    scores: dict[str, Any] = {"openvino_precision": openvino_precision()}
    for label, (fmt, quantize) in RUNTIMES.items():
        model = exported(weights, out, fmt, quantize, data, max(imgsz.values()))
        folder = out / "bootstrap" / label.replace(" ", "-")
        scores[label] = {t: bootstrapped(model, data, t, imgsz[t], names[t], n_boot, folder / t) for t in names}
        values = ", ".join(f"{t} {s['value']:.4f}" for t, s in scores[label].items())
        LOGGER.info(f"{colorstr('benchmarks.runtimes:')} {label}: {values}")
    return scores


def runtimes_table(results: dict, title: str = "the default protocol's final model, seed 0") -> list[str]:
    """The scores per runtime of `results` (its ``runtimes``, when they ran) of `title`'s model."""
    if not (runtimes := results.get("runtimes")):
        return []
    rows = (
        [label, *(score_text(s.get(t)) for t in TASKS)]
        for label, s in runtimes.items()
        if label != "openvino_precision"
    )
    return [
        *table(f"Accuracy per runtime ({title}; INT8 calibrated on the val images of every task)",
               ["runtime", *(METRIC_NAME[t] for t in TASKS)], rows),
        "",
        f"OpenVINO runs its fp32 model at its CPU plugin's default precision: {runtimes['openvino_precision']}.",
    ]  # fmt: skip


def run(report: Report) -> None:
    """Score the checkpoint ``model=`` in every runtime."""
    args = report.args
    data = str(args.get("data", "datasets/hw2.yaml"))
    size = int(args.get("imgsz", 320))
    imgsz = {t: int(args.get("cls_imgsz", 160)) if t == "cls" else size for t in load_data_config(data)["tasks"]}
    scores = runtime_scores(str(args["model"]), data, imgsz, report.out, int(args.get("bootstrap", 1000)))
    report.results.update(model=repo_relative(args["model"]), runtimes=scores)


KEYS = {"model", "data", "imgsz", "cls_imgsz", "bootstrap"}
TITLE = "Accuracy per runtime of {model}"
BENCHMARK = Benchmark("benchmarks.runtimes", KEYS, "runs/unified/runtimes", TITLE, run,
                      lambda results: [runtimes_table(results, results["model"])])  # fmt: skip
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
