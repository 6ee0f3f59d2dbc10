"""``yolo-unified benchmark``: size, CPU latency and memory of the unified model and its references, in one run.

Same process, input size, batch 1 and thread count for every row: the unified model in every runtime (INT8 calibrated
on the checkpoint's data or ``data=``), the backbone alone, the three separate Ultralytics models it replaces (and
their sum), the seg post-processing, and the whole predictor on a real image. Saved as ``benchmark.md`` and
``benchmark.json`` in ``runs/unified/benchmark*/``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.engine.exporter import Exporter
from ultralytics.nn.autobackend import AutoBackend
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SemanticSegmentationModel
from ultralytics.utils import ASSETS, LOGGER, colorstr
from ultralytics.utils.torch_utils import get_cpu_info, get_flops

from yolo_unified.common import BACKBONE_LAYERS, ULTRALYTICS_TASK, task_imgsz
from yolo_unified.defaults import pinned_threads
from yolo_unified.export import UnifiedExporter, check_onnx_packages
from yolo_unified.files import load_checkpoint
from yolo_unified.nn.modules import upsample_logits
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.base import run_dir

SEM_YAML = str(CFG_DIR / "models" / "yolov8n-sem.yaml")
SEPARATE = (  # the separate Ultralytics models of the comparison: task, model YAML, class, row name
    ("det", "yolov8n.yaml", DetectionModel, "YOLOv8n detector"),
    ("seg", SEM_YAML, SemanticSegmentationModel, "semantic model, YOLOv8n backbone"),
    ("cls", "yolov8n-cls.yaml", ClassificationModel, "YOLOv8n-cls"),
)
SEPARATE_SUM = "three separate Ultralytics models, summed"
PROC = Path("/proc/self")  # Linux: resident memory now (VmRSS) and at its peak (VmHWM, reset via clear_refs)
Runner = Callable[[], Any]


@dataclass
class Row:
    """One measured network and runtime."""

    name: str
    runtime: str
    params: int | None
    gflops: float | None
    median_ms: float
    p90_ms: float
    peak_rss_mb: float | None
    added_mb: float | None


def reset_peak_rss() -> float | None:
    """Reset the peak-resident-memory mark (Linux); return the resident memory now (MB), None if impossible."""
    try:
        (PROC / "clear_refs").write_text("5")
    except OSError:
        return None
    return rss_mb("VmRSS")


def rss_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` in MB: ``VmRSS`` (now) or ``VmHWM`` (peak since the last reset)."""
    line = next(x for x in (PROC / "status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def time_ms(run: Runner, runs: int, warmup: int) -> tuple[float, float]:
    """Median and 90th percentile of the wall time of `run`, in ms, over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def paired_ratio(a: Runner, b: Runner, runs: int, warmup: int) -> float:
    """Median latency of `a` over that of `b`, timed in alternation so that drift in machine speed hits both alike."""
    for _ in range(warmup):
        a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for run, out in ((a, times[0]), (b, times[1])):
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    return float(np.median(times[0]) / np.median(times[1]))


def torch_forward(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """Forward `model` on `x` without autograd."""
    with torch.inference_mode():
        return model(x)


def ort_runner(file: str, x: torch.Tensor, threads: int) -> Runner:
    """An ONNX Runtime CPU session on `file` with `threads` intra-op threads (one inter-op thread)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(file, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def openvino_runner(folder: str, x: torch.Tensor, threads: int) -> Runner:
    """An OpenVINO CPU request on the model in `folder`: `threads` threads, fp32 where not quantized (not bf16)."""
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    model = core.read_model(next(Path(folder).glob("*.xml")))
    request = core.compile_model(model, "CPU", config).create_infer_request()
    feed = [x.numpy()]
    return lambda: request.infer(feed)


def machine_info() -> dict[str, Any]:
    """The CPU, its logical cores and the versions of Python, torch and Ultralytics: what a measurement ran on."""
    return {
        "cpu": get_cpu_info(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "ultralytics": ultralytics_version,
        "python": platform.python_version(),
    }


def model_size(net: torch.nn.Module, imgsz: int) -> tuple[int, float]:
    """Parameters and GFLOPs (Ultralytics' ``get_flops``) of `net` at `imgsz`."""
    return sum(p.numel() for p in net.parameters()), get_flops(net, imgsz)


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The predictor's seg post-processing on stride-8 logits: bilinear upsampling to the input size, then argmax."""
    with torch.inference_mode():
        return upsample_logits(logits, size).max(1).indices


class Benchmark:
    """The rows of one benchmark run; see the module docstring."""

    def __init__(
        self,
        model: str,
        predict: Callable[..., Any],
        imgsz: int | None,
        runs: int,
        warmup: int,
        threads: int,
        save_dir: Path,
        data: str | None,
    ):
        """Load the checkpoint; `predict` is the end-to-end prediction to time. Nothing is measured yet."""
        self.weights, self.runs, self.warmup, self.threads, self.save_dir = model, runs, warmup, threads, save_dir
        self.data, self.predict = data, predict
        self.exported: dict[str, str] = {}  # runtime -> exported file of the unified model
        self.model = load_checkpoint(model)[0].float().eval()
        self.imgsz = int(imgsz or task_imgsz(self.model))
        self.x = torch.rand(1, 3, self.imgsz, self.imgsz, generator=torch.Generator().manual_seed(0))
        self.rows: list[Row] = []
        self.overhead = float("nan")  # full model / backbone eager latency, timed in alternation (run() sets it)
        self.int8_speedup = float("nan")  # ONNX Runtime fp32 / fastest INT8 latency, timed in alternation
        self.load_average = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews every row

    def measure(self, name: str, runtime: str, make: Callable[[], Runner], size: tuple[int, float] | None = None):
        """Build a runner with `make` and time it; the peak memory covers building and running."""
        gc.collect()
        start = reset_peak_rss()
        median, p90 = time_ms(make(), self.runs, self.warmup)
        peak = rss_mb("VmHWM") if start is not None else None
        added = peak - start if peak is not None else None
        self.rows.append(Row(name, runtime, *(size or (None, None)), median, p90, peak, added))
        LOGGER.info(f"{name:<56} {runtime:<14} median {median:7.2f} ms  p90 {p90:7.2f} ms")

    def export(self, fmt: str, seg_argmax: bool = False, quantize: int | None = None) -> str:
        """Export the checkpoint into the run folder (static shape, batch 1; INT8 on ``data``, into ``int8/``)."""
        model, folder = deepcopy(self.model), (self.save_dir / "int8" if quantize else self.save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model.pt_path = str(folder / f"{Path(self.weights).stem}{'-argmax' if seg_argmax else ''}.pt")
        args = {"format": fmt, "imgsz": self.imgsz, "batch": 1, "device": "cpu", "verbose": False}
        if quantize:
            args.update(quantize=quantize, data=self.data)
        return UnifiedExporter(overrides=args, seg_argmax=seg_argmax)(model)

    def measure_int8(self, unified: str, size: tuple[int, float]) -> None:
        """OpenVINO fp32 and the INT8 rows; without calibration data the INT8 rows are left out with a warning."""
        folder = self.exported["OpenVINO fp32"] = self.export("openvino")
        self.measure(unified, "OpenVINO fp32", lambda: openvino_runner(folder, self.x, self.threads), size)
        try:
            onnx_int8 = self.exported["ONNX Runtime INT8"] = self.export("onnx", quantize=8)
        except (ValueError, FileNotFoundError) as e:
            LOGGER.warning(f"benchmark: INT8 rows left out: {e}")
            return
        self.measure(unified, "ONNX Runtime INT8", lambda: ort_runner(onnx_int8, self.x, self.threads), size)
        folder = self.exported["OpenVINO INT8"] = self.export("openvino", quantize=8)
        self.measure(unified, "OpenVINO INT8", lambda: openvino_runner(folder, self.x, self.threads), size)
        fastest = min(self.rows[-2:], key=lambda row: row.median_ms)
        ort = fastest.runtime == "ONNX Runtime INT8"
        int8 = ort_runner(onnx_int8, self.x, self.threads) if ort else openvino_runner(folder, self.x, self.threads)
        fp32 = ort_runner(self.exported["ONNX Runtime"], self.x, self.threads)
        self.int8_speedup = paired_ratio(fp32, int8, self.runs, self.warmup)

    def measure_separate(self) -> None:
        """The separate Ultralytics models (untrained: the same latency) in both runtimes, and their sums."""
        rows = {"PyTorch eager": [], "ONNX Runtime": []}
        for task, yaml_file, model_class, name in SEPARATE:
            net = model_class(yaml_file, nc=len(self.model.task_names[task]), verbose=False).eval()
            size = model_size(net, self.imgsz)
            backend = AutoBackend(deepcopy(net), verbose=False)
            self.measure(
                f"{name} (Ultralytics)", "PyTorch eager", lambda b=backend: partial(torch_forward, b, self.x), size
            )
            rows["PyTorch eager"].append(self.rows[-1])
            net.pt_path = str(self.save_dir / f"separate-{task}.pt")
            net.args, net.task = {"imgsz": self.imgsz, "data": None}, ULTRALYTICS_TASK[task]
            args = {"format": "onnx", "imgsz": self.imgsz, "batch": 1, "device": "cpu", "verbose": False}
            onnx_file = Exporter(overrides=args)(net)
            self.measure(
                f"{name} (Ultralytics)", "ONNX Runtime", lambda f=onnx_file: ort_runner(f, self.x, self.threads), size
            )
            rows["ONNX Runtime"].append(self.rows[-1])
        for runtime, parts in rows.items():
            params, gflops = sum(r.params for r in parts), sum(r.gflops for r in parts)
            median, p90 = sum(r.median_ms for r in parts), sum(r.p90_ms for r in parts)
            self.rows.append(Row(SEPARATE_SUM, runtime, params, gflops, median, p90, None, None))

    def run(self) -> list[Row]:
        """Measure every row, in the order of the table."""
        unified, eager_rt = "unified model (det + seg + cls)", "PyTorch eager"
        eager = AutoBackend(deepcopy(self.model), verbose=False)  # as the predictor runs it: fused, channels_last
        size = model_size(self.model, self.imgsz)  # as trained (fusing gives each level its own tower conv copy)
        self.measure(unified, eager_rt, lambda: partial(torch_forward, eager, self.x), size)
        onnx_file = self.exported["ONNX Runtime"] = self.export("onnx")
        self.measure(unified, "ONNX Runtime", lambda: ort_runner(onnx_file, self.x, self.threads), size)
        ts_file = self.export("torchscript")
        self.measure(unified, "TorchScript", lambda: partial(torch_forward, AutoBackend(ts_file), self.x), size)
        self.measure_int8(unified, size)

        backbone = AutoBackend(torch.nn.Sequential(*eager.model.model[:BACKBONE_LAYERS]), verbose=False)
        name = f"backbone alone (layers 0-{BACKBONE_LAYERS - 1})"
        self.measure(
            name, eager_rt, lambda: partial(torch_forward, backbone, self.x), model_size(backbone.model, self.imgsz)
        )
        full_run, backbone_run = partial(torch_forward, eager, self.x), partial(torch_forward, backbone, self.x)
        self.overhead = paired_ratio(full_run, backbone_run, self.runs, self.warmup)  # timed in alternation
        self.measure_separate()

        with torch.inference_mode():
            logits = eager(self.x)[1]
        name = f"seg upsample x8 + argmax alone ({logits.shape[1]} classes, as the predictor)"
        self.measure(name, "PyTorch", lambda: partial(upsampled_argmax, logits, self.x.shape[2:]))
        argmax_file = self.export("onnx", seg_argmax=True)
        name = "unified model with seg upsample + argmax in the graph"
        self.measure(name, "ONNX Runtime", lambda: ort_runner(argmax_file, self.x, self.threads))

        image = cv2.imread(str(ASSETS / "bus.jpg"))
        name = f"predict end to end ({image.shape[1]}x{image.shape[0]} image: letterbox, NMS, seg map)"
        self.measure(name, eager_rt, lambda: partial(self.predict, image, imgsz=self.imgsz, verbose=False))
        return self.rows

    def ratios(self) -> dict[str, float]:
        """The latency ratios of this run's rows (and its slowest p90 of the unified model), rounded to 3 decimals."""
        median = {(r.name, r.runtime): r.median_ms for r in self.rows}
        unified = self.rows[0].name
        separate = {f"{name} (Ultralytics)" for *_, name in SEPARATE} | {SEPARATE_SUM}
        ratios = {
            "full model / backbone latency (PyTorch eager, timed in alternation)": self.overhead,
            "ONNX Runtime / PyTorch eager latency": median[unified, "ONNX Runtime"] / median[unified, "PyTorch eager"],
            "slowest p90 of the unified model (ms)": max(r.p90_ms for r in self.rows if r.name not in separate),
        }
        if int8 := [median[k] for k in median if k[0] == unified and k[1].endswith("INT8")]:
            ratios["ONNX Runtime fp32 / fastest INT8 latency (timed in alternation)"] = self.int8_speedup
            ratios["fastest INT8 / three separate models summed (ONNX Runtime fp32)"] = (
                min(int8) / median[SEPARATE_SUM, "ONNX Runtime"]
            )
        return {k: round(v, 3) for k, v in ratios.items()}

    def machine(self) -> dict[str, Any]:
        """What the numbers were measured on and with."""
        import onnxruntime

        return {
            **machine_info(),
            "onnxruntime": onnxruntime.__version__,
            "threads": self.threads,
            "load_average": self.load_average,
            "model": str(self.weights),
            "imgsz": self.imgsz,
            "batch": 1,
            "runs": self.runs,
            "warmup": self.warmup,
        }


def markdown(machine: dict[str, Any], rows: list[Row], ratios: dict[str, float]) -> str:
    """The benchmark as one markdown table with its machine line, then the ratios."""
    lines = [
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['threads']} threads "
        f"(torch.set_num_threads, ONNX Runtime intra-op; 1 inter-op); torch {machine['torch']}, onnxruntime "
        f"{machine['onnxruntime']}, ultralytics {machine['ultralytics']}, Python {machine['python']}; load average "
        f"before the run {machine['load_average']} (1, 5, 15 min).",
        f"Input {machine['imgsz']}x{machine['imgsz']}, batch 1, median and p90 of {machine['runs']} runs after "
        f"{machine['warmup']} warm-up runs. Peak RSS: the process's peak resident memory while the row was built and "
        "run; added: that peak minus the resident memory when the row started (runtime, session, activations).",
        "",
        "| model | runtime | params (M) | GFLOPs | median (ms) | p90 (ms) | peak RSS (MB) | added (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = f"{r.params / 1e6:.2f}" if r.params is not None else "-"
        gflops = f"{r.gflops:.2f}" if r.gflops is not None else "-"
        rss = " | ".join(f"{v:.0f}" if v is not None else "-" for v in (r.peak_rss_mb, r.added_mb))
        lines.append(f"| {r.name} | {r.runtime} | {params} | {gflops} | {r.median_ms:.1f} | {r.p90_ms:.1f} | {rss} |")
    lines += ["", "| ratio | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in ratios.items())]
    return "\n".join(lines) + "\n"


def benchmark(
    model: str,
    predict: Callable[..., Any],
    imgsz: int | None = None,
    data: str | None = None,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    project: str | None = None,
    name: str | None = None,
    exist_ok: bool = False,
) -> dict[str, Any]:
    """Benchmark a unified checkpoint; `predict` is its end-to-end prediction (``UnifiedYOLO.predict``). ``imgsz``
    defaults to its deployment size, ``threads`` to every logical core. Returns the machine, rows, ratios, exported
    files by runtime and ``save_dir``."""
    if not str(model).endswith(".pt"):
        raise ValueError(f"benchmark needs a unified *.pt checkpoint, got '{model}'")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    check_onnx_packages()
    save_dir = run_dir(project, name, "benchmark", exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count() or 1
    with pinned_threads(threads):
        bench = Benchmark(model, predict, imgsz, runs, warmup, threads, save_dir, data)
        rows = bench.run()
        ratios, machine = bench.ratios(), bench.machine()
    table = markdown(machine, rows, ratios)
    (save_dir / "benchmark.md").write_text(table)
    result = {"machine": machine, "rows": [asdict(r) for r in rows], "ratios": ratios, "exported": bench.exported}
    (save_dir / "benchmark.json").write_text(json.dumps(result, indent=2))
    LOGGER.info(f"\n{colorstr('bold', 'yolo-unified benchmark')}\n{table}Results saved to {colorstr('bold', save_dir)}")
    return {**result, "save_dir": str(save_dir)}
