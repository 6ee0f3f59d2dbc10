"""Peak memory and median time of a joint training step per balancing method, each in a fresh process: the unified
model with HW2's class counts, one random batch per task, the task losses, the balancer's combination and backward."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
from ultralytics.utils import LOGGER, TQDM

from benchmarks.common import Benchmark, Report, run_benchmark, table
from yolo_unified.balancing import BALANCERS, build_balancer
from yolo_unified.common import SHARED_MODULES, listed, module_of
from yolo_unified.data.prepare import DET_NAMES, SEG_NAMES
from yolo_unified.models.unified.joint import task_losses
from yolo_unified.nn import UnifiedModel
from yolo_unified.speed import reset_peak_rss, rss_mb

KEYS = {"methods", "imgsz", "batch", "steps", "threads"}
CLS_CLASSES = 10  # Imagenette
TASKS = ["seg", "det", "cls"]


def random_batches(imgsz: int, batch: int, seed: int = 0) -> dict[str, list[dict]]:
    """One random batch per task, in Ultralytics' batch formats (four boxes per detection image)."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(batch * 4, 4, generator=g) * 0.4 + torch.tensor([0.3, 0.3, 0.1, 0.1])
    return {
        "seg": [{"img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
                 "semantic_mask": torch.randint(0, len(SEG_NAMES), (batch, imgsz, imgsz), generator=g)}],
        "det": [{"img": torch.rand(batch, 3, imgsz, imgsz, generator=g), "bboxes": boxes,
                 "cls": torch.randint(0, len(DET_NAMES), (batch * 4, 1), generator=g).float(),
                 "batch_idx": torch.arange(batch).repeat_interleave(4).float()}],
        "cls": [{"img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
                 "cls": torch.randint(0, CLS_CLASSES, (batch,), generator=g)}],
    }  # fmt: skip


def measure(method: str, imgsz: int, batch: int, steps: int, threads: int = 1) -> dict[str, Any]:
    """Peak memory (MB) and median step time (s) of `steps` joint steps of `method` on `threads` CPU threads, in this
    process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    names = {"seg": dict(enumerate(SEG_NAMES)), "det": dict(enumerate(DET_NAMES))}
    names["cls"] = dict(enumerate(range(CLS_CLASSES)))
    model = UnifiedModel(task_names=names, verbose=False).train()
    shared = [p for n, p in model.named_parameters() if module_of(n) in SHARED_MODULES]
    balancer = build_balancer(method, TASKS)
    batches = random_batches(imgsz, batch)
    base = reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses, _ = task_losses(model, batches, TASKS)
        total, _ = balancer.combine(losses, shared)
        if total is not None:
            total.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = max(rss_mb("VmHWM"), base or 0.0)  # the kernel updates the peak mark lazily: it may lag RSS by a page
    return {"peak_mb": peak, "added_mb": None if base is None else peak - base, "step_s": float(np.median(times))}


def tables(results: dict[str, Any]) -> list[list[str]]:
    """The summary after its header: the settings and the table of every method."""
    s = results["settings"]
    rows = ([m, r["kind"], f"{r['peak_mb']:.0f}", f"{r['added_mb']:.0f}", f"{r['step_s']:.2f}"]
            for m, r in results["methods"].items())  # fmt: skip
    return [
        [
            f"- one random batch per task of {s['batch']} images at {s['imgsz']} px, {s['steps']} steps on "
            f"{s['threads']} threads, each method in a fresh process; peak: the process's peak resident memory; "
            "added: over the model and batches; step: median time of a step (losses, combination, backward)"
        ],
        table("Steps", ["method", "kind", "peak (MB)", "added by the steps (MB)", "step (s)"], rows),
    ]


def run(report: Report) -> None:
    """Measure every method of ``methods`` (default: all), each in a fresh process."""
    args = report.args
    methods = listed(args.get("methods") or list(BALANCERS))
    if unknown := [m for m in methods if m not in BALANCERS]:
        raise ValueError(f"methods: unknown {unknown}; the balancing methods are {', '.join(BALANCERS)}")
    imgsz, batch, steps = int(args.get("imgsz", 320)), int(args.get("batch", 16)), int(args.get("steps", 2))
    threads = int(args.get("threads", os.cpu_count() or 1))
    measured = {}
    for method in TQDM(methods, desc="joint step memory"):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # a fresh process: its own peak
            step = pool.submit(measure, method, imgsz, batch, steps, threads).result()
        measured[method] = {"kind": BALANCERS[method].kind, **step}
        LOGGER.info(f"{method}: {measured[method]}")
    report.results.update(
        settings={"imgsz": imgsz, "batch": batch, "steps": steps, "threads": threads}, methods=measured
    )


TITLE = "Peak memory of a joint step, per balancing method"
BENCHMARK = Benchmark("benchmarks.joint_memory", KEYS, "benchmarks/results/joint-memory", TITLE, run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
