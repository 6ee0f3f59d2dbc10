"""The HW2 benchmark: single-task baselines, the sequential protocol and the optional sections (separate models,
runtimes, deployed path, joint training), resumable; commands and outputs: benchmarks/README.md."""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, YAML

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import (
    METRIC_NAME,
    Benchmark,
    ProtocolSetup,
    Report,
    budget_text,
    execute,
    protocol_run,
    repo_path,
    repo_relative,
    run_benchmark,
    run_verdict,
    score_text,
    stage_minutes,
    table,
)
from benchmarks.deployed import deployed_scores, separate_deployed_detection
from benchmarks.joint import joint_runs
from benchmarks.runtimes import runtime_scores, runtimes_table
from benchmarks.separate import train_separate
from yolo_unified.balancing import BALANCERS
from yolo_unified.common import TASKS, listed
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.model import UnifiedYOLO
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.report import forgetting, write_report

KEYS = {"data", "imgsz", "quick", "pretrained", "seeds", "bootstrap", "speed_imgsz", "separate", "runtimes"}
KEYS |= {"deployed", "joint", "joint_methods", "joint_seeds", "recorded", "speed"}
SPEED_TARGETS = {  # the homework's latency targets, on the ratios `yolo-unified benchmark` measures: (goal, met)
    "full model / backbone latency (PyTorch eager, timed in alternation)": ("<= 1.3", lambda v: v <= 1.3),
    "ONNX Runtime / PyTorch eager latency": ("< 1", lambda v: v < 1),
    "slowest p90 of the unified model (ms)": ("< 150", lambda v: v < 150),
    "ONNX Runtime fp32 / fastest INT8 latency (timed in alternation)": (">= 1.5", lambda v: v >= 1.5),
    "fastest INT8 / three separate models summed (ONNX Runtime fp32)": ("<= 0.2", lambda v: v <= 0.2),
}


@dataclass
class Hw2(ProtocolSetup):
    """One invocation of benchmarks.hw2: the protocol setup, the data's class names, the runs and sections kept as
    recorded (their weights are not here: `runs_without_weights`) and the bootstrap resamples per score."""

    names: dict[str, dict[int, str]]
    recorded: set[str]
    n_boot: int

    @classmethod
    def start(cls, report: Report) -> Hw2:
        """The setup; refuses to extend a benchmark whose weights are not here without ``recorded=True``."""
        setup = ProtocolSetup.start(report)
        recorded = runs_without_weights(report.previous)
        if recorded and not report.args.get("recorded", False):
            raise FileNotFoundError(
                f"{report.out} holds a benchmark whose weights are not here ({', '.join(sorted(recorded))}; a clone "
                "of the repository has only the reports): pass recorded=True to keep those runs as recorded and "
                "train only the rest, or a new out= to run it all again"
            )
        names = task_names(load_data_config(setup.settings["data"]))
        n_boot = int(report.args.get("bootstrap", 50 if report.quick else 1000))
        return cls(**vars(setup), names=names, recorded=recorded, n_boot=n_boot)


def runs_without_weights(results: dict) -> set[str]:
    """The runs of `results` whose weights are not in this checkout: protocol and joint runs by name, ``separate``
    for the separate Ultralytics models."""
    files = {name: [s["weights"] for s in run["stages"]] for name, run in results.get("runs", {}).items()}
    files |= {name: [run["weights"]] for name, run in results.get("joint", {}).items()}
    if separate := results.get("separate"):
        files["separate"] = [r["weights"] for r in separate.values()]
    return {name for name, paths in files.items() if not all(repo_path(p).is_file() for p in paths)}


def final_scores(state: dict, data: str, names: dict, out: Path, n_boot: int) -> dict[str, dict[str, Any]]:
    """Each learned task's final score with its bootstrap interval, at the task's own image size: a chained run's
    last weights, or (``chain: False``, the baselines) the weights of the task's own stage."""
    config, weights = state["config"], {s["task"]: s["weights"] for s in state["stages"]}
    if config.get("chain", True):
        weights = dict.fromkeys(weights, state["stages"][-1]["weights"])
    return {
        stage["task"]: bootstrapped(
            weights[stage["task"]], data, stage["task"], {**config["common"], **stage}.get("imgsz", 640),
            names[stage["task"]], n_boot, out / "bootstrap" / stage["task"],
        )
        for stage in config["stages"]
        if stage["task"] in weights
    }  # fmt: skip


def protocol_runs(bench: Hw2, states: dict[str, dict]) -> dict[str, dict]:
    """The default protocol at seed 0, the single-task baselines (cfg/baselines.yaml, from seed 0's first stage),
    then the further seeds (their reports with the baselines' retention row; seed 0's report is rewritten with it);
    `states` gets the protocol state of every run trained, resumed or skipped as finished here."""
    out = bench.report.out

    def score(root: Path, state: dict) -> dict[str, Any]:
        states[root.name] = state
        sequential = root.name != "baselines"  # the baselines are separate models: no forgetting, no verdict
        if not sequential and "default_seed0" in states:
            write_report(out / "default_seed0", states["default_seed0"], bench.limit, baselines=str(root))
        return {
            "final": final_scores(state, bench.settings["data"], bench.names, root, bench.n_boot),
            "forgetting": forgetting(state, bench.limit) if sequential else {},
            "verdict": run_verdict(state, bench.limit) if sequential else "",
            "stage_minutes": stage_minutes(state),
        }

    def seed0() -> dict:
        if "default_seed0" not in states:
            raise FileNotFoundError("baselines start from default_seed0's first stage, whose weights are not here")
        return states["default_seed0"]

    later = str(out / "baselines")  # the seeds after 0 start once the baselines exist
    plan = [
        protocol_run(
            bench, f"default_seed{seed}", {**bench.seq, "seed": seed, "baselines": later if seed else None},
            score, {"label": f"default combination (cfg/{bench.protocol.name}), seed {seed}"},
        )
        for seed in range(int(bench.report.args.get("seeds", 2)))
    ]  # fmt: skip
    baselines = YAML.load(CFG_DIR / "baselines.yaml")
    plan.insert(1, protocol_run(bench, "baselines", baselines, score, {"label": "single-task baselines"}, seed0))
    runs: dict[str, dict] = {}
    execute(plan, out, bench.report.previous.get("runs", {}), runs.__setitem__, bench.report.bench.module)
    return runs


def final_model_speed(bench: Hw2, weights: str | None) -> dict[str, Any]:
    """``speed`` (rows, ratios, machine) and ``speed_table`` of `yolo-unified benchmark` on seed 0's final model
    (`weights`; None: kept as recorded); a re-run keeps what was timed on the same weights file alike."""
    previous, quick = bench.report.previous, bench.report.quick
    if weights is None:
        return {"speed": previous["speed"], "speed_table": previous["speed_table"]}
    if not bench.report.args.get("speed", True):
        return {"speed": {}, "speed_table": ""}
    imgsz = int(bench.report.args.get("speed_imgsz", 64 if quick else 512))
    settings = {"imgsz": imgsz, "runs": 3 if quick else 50, "warmup": 1 if quick else 10}
    timed = {"weights_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest(), **settings}
    if previous.get("speed", {}).get("timed") == timed:
        LOGGER.info("benchmarks.hw2: speed of seed 0's final model as timed before (same weights)")
        return {"speed": previous["speed"], "speed_table": previous["speed_table"]}
    speed = UnifiedYOLO(weights).benchmark(**settings, project=str(bench.report.out), name="speed", exist_ok=True)
    machine = {**speed["machine"], "model": repo_relative(speed["machine"]["model"])}
    return {
        "speed": {"rows": speed["rows"], "ratios": speed["ratios"], "machine": machine, "timed": timed},
        "speed_table": (Path(speed["save_dir"]) / "benchmark.md").read_text(),
    }


def sections(bench: Hw2, runs: dict[str, dict], states: dict[str, dict]) -> dict[str, Any]:
    """The optional sections asked for (``separate``, ``joint``, ``deployed``, ``runtimes``; what was kept as
    recorded stays so) and the speed section. The deployed path scores the default runs, the recipe's seed-0 joint
    run and the separate detector trained here."""
    args, out, previous = bench.report.args, bench.report.out, bench.report.previous
    data, n_boot = bench.settings["data"], bench.n_boot
    final = states["default_seed0"]["stages"][-1]["weights"] if "default_seed0" in states else None
    found = {  # a section kept as recorded: the separate models without weights, the runtimes of a recorded seed 0
        "separate": previous["separate"] if "separate" in bench.recorded else {},
        "joint": {},
        "runtimes": previous.get("runtimes", {}) if final is None else {},
    }
    if args.get("separate", False) and "separate" not in bench.recorded:
        settings = {k: v for k, v in bench.settings.items() if k != "data"}
        found["separate"] = train_separate(data, out / "separate", settings, bench.force, n_boot)
    if args.get("joint", False):
        force = bench.force | ({"task_args": {"cls": {"imgsz": bench.force["imgsz"]}}} if bench.report.quick else {})
        single = {t: s["value"] for t, s in runs["baselines"]["final"].items()}
        methods, seeds = listed(args.get("joint_methods") or list(BALANCERS)), int(args.get("joint_seeds", 2))
        kept = previous.get("joint", {})
        found["joint"] = joint_runs(out, bench.settings, force, methods, seeds, single, n_boot, kept)
    if args.get("deployed", False):
        recipe = [n for n, r in found["joint"].items() if r["seed"] == 0 and r["default"]][:1]
        scored = {n: runs[n] for n in runs if n.startswith("default")} | {n: found["joint"][n] for n in recipe}
        for name, run in ((n, r) for n, r in scored.items() if n not in bench.recorded):
            weights = repo_path(run.get("weights") or out / name / "weights" / "best.pt")
            run["deployed"] = deployed_scores(str(weights), data, out / name / "deployed", n_boot=n_boot)
        if (det := found["separate"].get("det")) and "separate" not in bench.recorded:
            det["deployed"] = separate_deployed_detection(repo_path(det["weights"]), data, out / "separate", n_boot)
    if args.get("runtimes", False) and final is not None:
        config = states["default_seed0"]["config"]
        imgsz = {s["task"]: {**config["common"], **s}.get("imgsz", 640) for s in config["stages"]}
        found["runtimes"] = runtime_scores(final, data, imgsz, out / "runtimes", n_boot)
    return {**{k: v for k, v in found.items() if v}, **final_model_speed(bench, final)}


def run(report: Report) -> None:
    """The benchmark: the protocol runs, then the sections asked for; their records join results.json."""
    bench = Hw2.start(report)
    states: dict[str, dict] = {}  # the protocol state of every run this call trained, resumed or skipped as finished
    runs = protocol_runs(bench, states)
    found = sections(bench, runs, states)
    minutes = {s["save_dir"]: m for r in runs.values() for s, m in zip(r["stages"], r["stage_minutes"], strict=True)}
    report.results.update(
        budget=budget_text(bench.seq, bench.settings["imgsz"], bench.force),
        bootstrap=bench.n_boot,
        training_minutes=sum(minutes.values()),  # a stage shared by several runs counted once
        recorded=sorted(bench.recorded),
        references={
            "seg_all_background": runs["baselines"]["final"].get("seg", {}).get("all_background", math.nan),
            "cls_chance": 1 / len(bench.names["cls"]) if "cls" in bench.names else math.nan,
        },
        runs=runs,
        **found,
    )


def forgetting_text(d: dict | None) -> str:
    """Relative and absolute forgetting of a task."""
    return f"{d['relative']:+.1%} ({d['points']:+.2f} pts)" if d else ""


def overview(results: dict) -> list[str]:
    """The summary's budget, training time, runs kept as recorded and score references."""
    kept, references = results.get("recorded"), results["references"]
    recorded = f"- kept as recorded by earlier invocations (their weights were not here): {', '.join(kept or [])}"
    return [
        f"- budget: {results['budget']}",
        f"- training time of the protocol runs and baselines: {results['training_minutes']:.1f} min (every stage once, "
        "from Ultralytics' results.csv; the separate and joint runs' are in their tables)",
        *([recorded] if kept else []),
        f"- scores: final value [95% bootstrap interval over the val images, {results['bootstrap']} resamples]; "
        f"references: all-background mIoU {references['seg_all_background']:.4f}, chance top-1 "
        f"{references['cls_chance']:.4f}, chance mAP50 ~0",
    ]


def protocol_tables(results: dict) -> list[list[str]]:
    """The baselines' scores, each default run's forgetting report as the protocol wrote it (title and first line
    left out), and the final scores, forgetting, verdict and training time of every sequential run."""
    runs = results["runs"]
    baselines = table(
        "Single-task baselines (each task alone, same epochs and image size)", ["task", "score"],
        ([f"{t} {METRIC_NAME[t]}", score_text(s)] for t, s in runs["baselines"]["final"].items()),
    )  # fmt: skip
    reports = [f"## Sequential protocol ({results.get('protocol', 'cfg/seq.yaml')})"]  # older records: no protocol
    for name in (n for n in runs if n.startswith("default")):
        report = (repo_path(runs[name]["root"]) / "forgetting.md").read_text()
        reports += ["", f"### {name}", "", report.split("\n\n", 2)[2]]
    final = table(
        f"Final scores (each a full seg -> det -> cls run; limit {results['forget_limit']:.0%} relative forgetting)",
        ["run", "mIoU", "mAP50", "top-1", "seg forgetting", "det forgetting", "verdict", "minutes"],
        ([r["label"], *(score_text(r["final"].get(t)) for t in TASKS), forgetting_text(r["forgetting"].get("seg")),
          forgetting_text(r["forgetting"].get("det")), r["verdict"], f"{sum(r['stage_minutes']):.1f}"]
         for name, r in runs.items() if name != "baselines"),
    )  # fmt: skip
    return [baselines, reports, final]


def separate_table(results: dict) -> list[str]:
    """The separate Ultralytics models against the unified model's single-task baselines (when they ran); with
    pretrained weights two runs per task (all layers trained, pretrained layers frozen), the kept one marked."""
    if not (separate := results.get("separate")):
        return []
    baselines, speed_rows = results["runs"]["baselines"]["final"], results["speed"].get("rows")
    two_runs = any(len(r.get("runs", {})) > 1 for r in separate.values())
    rows = []
    for t, r in separate.items():
        for name, run in r.get("runs", {"trained": r}).items():  # a record from before the frozen runs: one run
            label = [f"{run['label']}{' (kept)' if name == r['kept'] else ''}"] if two_runs else []
            minutes = f"{run['minutes']:.1f}" if "minutes" in run else "n/a"  # older records: the call's time only
            rows.append([f"{t} {METRIC_NAME[t]}", r["model"], f"{r['params'] / 1e6:.2f}", *label,
                         score_text(run["final"]), score_text(baselines.get(t)), minutes])  # fmt: skip
    kept = (
        " With pretrained weights each separate model is also trained with its pretrained layers frozen (the unified "
        "model's pretrained backbone learns at a tenth of the rate); the better run by the task's score is kept, "
        "and is the one the other sections compare."
    )
    unified = f"; the unified model: {speed_rows[0]['params'] / 1e6:.2f} M for all three tasks" if speed_rows else ""
    summed = sum(r["params"] for r in separate.values()) / 1e6
    return [
        *table(
            "Separate Ultralytics models (one per task: what a user would otherwise train, same budgets and starting "
            "weights (pretrained or not) as the single-task baselines)",
            ["task", "Ultralytics model", "params (M)", *(["run"] if two_runs else []), "score",
             "unified model, this task alone", "minutes"],
            rows,
        ),
        "",
        f"Summed parameters of the separate models: {summed:.2f} M{unified}.{kept if two_runs else ''}",
    ]  # fmt: skip


def joint_table(results: dict) -> list[str]:
    """The joint runs' scores, delta_m, training time and memory (when they ran)."""
    if not (joint := results.get("joint")):
        return []
    return table(
        f"Joint training ({next(iter(joint.values()))['recipe']}, the protocol's optimizer steps per task; one run "
        "per balancing method at seed 0, the recipe's own method with more seeds; delta_m: mean relative change "
        "against the single-task baselines)",
        ["run", "balance", "mIoU", "mAP50", "top-1", "delta_m vs single-task", "minutes", "peak RSS (MB)"],
        ([name, r["method"], *(score_text(r["final"].get(t)) for t in TASKS), f"{r['delta_m']:+.1f}%",
          f"{r['minutes']:.1f}", f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"] for name, r in joint.items()),
    )  # fmt: skip


def deployed_table(results: dict) -> list[str]:
    """Validator against deployed-path scores of every run scored on the deployed path (when there is one)."""
    deployed = {run["label"]: run for run in results["runs"].values() if run.get("deployed")}
    deployed |= {name: run for name, run in results.get("joint", {}).items() if run.get("deployed")}
    if not deployed:
        return []
    lines = table(
        "Deployed path (each task as `yolo-unified predict` serves it: one letterboxed pass at the model's image "
        "size, the predictor's NMS with one class per box at conf 0.25; benchmarks.deployed)",
        ["run", *(f"{METRIC_NAME[t]}: validator / deployed" for t in TASKS)],
        ([label, *(f"{score_text(r['final'].get(t))} / {score_text(r['deployed'].get(t))}" for t in TASKS)]
         for label, r in deployed.items()),
    )  # fmt: skip
    if (det := results.get("separate", {}).get("det", {})).get("deployed"):
        lines += [
            "",
            f"The separate YOLOv8n detector the same way: mAP50 {score_text(det['final'])} (validator) / "
            f"{score_text(det['deployed'])} (its predictor's NMS); the separate segmentation and classification "
            "models predict as they validate.",
        ]
    return lines


def targets_table(results: dict) -> list[str]:
    """The homework's latency targets against the ratios of the speed section (a record from before the product
    measured ratios has its targets in its speed table)."""
    if not (ratios := results.get("speed", {}).get("ratios")):
        return []
    rows = ([f"{name} {SPEED_TARGETS[name][0]}", value, "yes" if SPEED_TARGETS[name][1](value) else "NO"]
            for name, value in ratios.items())  # fmt: skip
    return table("The homework's latency targets", ["target", "value", "met"], rows)


def tables(results: dict) -> list[list[str]]:
    """The summary after its header: overview, every table and the speed section."""
    speed = [results["speed_table"]] if results["speed_table"] else []
    return [overview(results), *protocol_tables(results), separate_table(results), runtimes_table(results),
            joint_table(results), deployed_table(results), speed, targets_table(results)]  # fmt: skip


BENCHMARK = Benchmark("benchmarks.hw2", KEYS, "benchmarks/results/hw2-320", "HW2 benchmark ({regime})", run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
