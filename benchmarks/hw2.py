"""The HW2 benchmark: single-task baselines, the sequential protocol and the optional sections
(separate models, runtimes, deployed path, joint training), resumable; commands and outputs: benchmarks/README.md."""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, YAML, colorstr

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import (
    METRIC_NAME,
    Benchmark,
    ProtocolSetup,
    Report,
    Run,
    budget_text,
    execute,
    protocol_run,
    repo_path,
    repo_relative,
    run_benchmark,
    run_verdict,
    score_text,
    stage_minutes,
)
from benchmarks.deployed import deployed_scores, separate_deployed_detection
from benchmarks.joint import joint_runs, plot_joint
from benchmarks.runtimes import runtime_scores, runtimes_table
from benchmarks.separate import train_separate
from yolo_unified.balancing import BALANCERS
from yolo_unified.common import TASKS, listed
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.models.unified.model import UnifiedYOLO
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.report import forgetting, write_report

KEYS = {"data", "imgsz", "quick", "pretrained", "seeds", "bootstrap", "speed_imgsz", "separate"}
KEYS |= {"runtimes", "deployed", "joint", "joint_methods", "joint_seeds", "recorded", "speed"}
SPEED_TARGETS = {  # the homework's latency targets, on the ratios `yolo-unified benchmark` measures: (goal, met)
    "full model / backbone latency (PyTorch eager, timed in alternation)": ("<= 1.3", lambda v: v <= 1.3),
    "ONNX Runtime / PyTorch eager latency": ("< 1", lambda v: v < 1),
    "slowest p90 of the unified model (ms)": ("< 150", lambda v: v < 150),
    "ONNX Runtime fp32 / fastest INT8 latency (timed in alternation)": (">= 1.5", lambda v: v >= 1.5),
    "fastest INT8 / three separate models summed (ONNX Runtime fp32)": ("<= 0.2", lambda v: v <= 0.2),
}
PUBLISHED = """Published figures for this protocol (not re-run here; pretrained backbones on a GPU):
- report A (MobileNetV3-S, 4.39M params): after stage 3 mIoU 30.01, mAP 47.05, top-1 15.00; forgetting 4.78% / 0.00% /
  0.00%; 1.90 ms on a T4;
- report B (YOLOv8n layers 0-9 + FPN + EWC, 1.01M params): mIoU 13.41, mAP 0.000004, top-1 36.67; 18 s per sample."""


@dataclass
class Hw2(ProtocolSetup):
    """One invocation of benchmarks.hw2: the protocol setup, the data's class names, the runs kept as recorded and
    the bootstrap resamples per score."""

    names: dict[str, dict[int, str]]  # class names per task of the data
    recorded: set[str]  # runs and sections kept from results.json: their weights are not here (`runs_without_weights`)
    n_boot: int


def runs_without_weights(results: dict) -> set[str]:
    """The runs and sections of a benchmark's `results` whose weights are not in this checkout.

    Names: a protocol run's (``default_seed0``, ``baselines``, ...), a joint run's, ``separate`` for the separate
    Ultralytics models.
    """
    files = {name: [s["weights"] for s in run["stages"]] for name, run in results.get("runs", {}).items()}
    files |= {name: [run["weights"]] for name, run in results.get("joint", {}).items()}
    if separate := results.get("separate"):
        files["separate"] = [r["weights"] for r in separate.values()]
    return {name for name, paths in files.items() if not all(repo_path(p).is_file() for p in paths)}


def start(report: Report) -> Hw2:
    """The benchmark's setup; refuses to extend a benchmark whose weights are not here without ``recorded=True``."""
    setup = ProtocolSetup.start(report)
    recorded = runs_without_weights(report.previous)
    if recorded and not report.args.get("recorded", False):
        raise FileNotFoundError(
            f"{report.out} holds a benchmark whose weights are not here ({', '.join(sorted(recorded))}; a clone of "
            "the repository has only the reports): pass recorded=True to keep those runs as recorded and train only "
            "the rest, or a new out= to run it all again"
        )
    names = task_names(load_data_config(setup.settings["data"]))
    n_boot = int(report.args.get("bootstrap", 50 if report.quick else 1000))
    return Hw2(**vars(setup), names=names, recorded=recorded, n_boot=n_boot)


def final_scores(state: dict, data: str, names: dict, out: Path, n_boot: int) -> dict[str, dict[str, Any]]:
    """Each learned task's final score with its bootstrap interval (validated at the task's own image size).

    A chained run is scored with its last weights; a run of separate models (``chain: False``, the baselines) scores
    each task with the weights of its own stage.
    """
    config = state["config"]
    weights = {s["task"]: s["weights"] for s in state["stages"]}
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
    """The default protocol at each of ``seeds`` and the single-task baselines (cfg/baselines.yaml, from seed 0's
    first stage, after it), each scored with bootstrap intervals; `states` gets the protocol state of every run
    trained, resumed or skipped as finished here. Seed 0's report gets the baselines' retention row once they exist,
    the later seeds' from the start."""
    report = bench.report

    def scored(sequential: bool) -> Callable[[Path, dict], dict[str, Any]]:
        def score(root: Path, state: dict) -> dict[str, Any]:
            states[root.name] = state
            if root.name == "baselines" and "default_seed0" in states:
                baselines = str(report.out / "baselines")
                write_report(report.out / "default_seed0", states["default_seed0"], bench.limit, baselines=baselines)
            return {
                "final": final_scores(state, bench.settings["data"], bench.names, root, bench.n_boot),
                "forgetting": forgetting(state, bench.limit) if sequential else {},  # the baselines: separate models
                "verdict": run_verdict(state, bench.limit) if sequential else "",
                "stage_minutes": stage_minutes(state),
            }

        return score

    def seed0_stage1() -> dict:
        if "default_seed0" not in states:
            raise FileNotFoundError("baselines start from default_seed0's first stage, whose weights are not here")
        return states["default_seed0"]

    def default(seed: int) -> Run:
        cfg = {**bench.seq, "seed": seed, **({"baselines": str(report.out / "baselines")} if seed else {})}
        label = f"default combination (cfg/{bench.protocol.name}), seed {seed}"
        return protocol_run(bench, f"default_seed{seed}", cfg, scored(True), {"label": label})

    baselines = YAML.load(CFG_DIR / "baselines.yaml")
    plan = [default(0), protocol_run(bench, "baselines", baselines, scored(False), {"label": "single-task baselines"},
                                     seed0_stage1)]  # fmt: skip
    plan += [default(seed) for seed in range(1, int(report.args.get("seeds", 2)))]
    runs: dict[str, dict] = {}
    execute(plan, report.out, report.previous.get("runs", {}), runs.__setitem__, report.bench.module)
    return runs


def separate_models(bench: Hw2) -> dict[str, dict]:
    """With ``separate=True``, the three Ultralytics models a user would otherwise train (benchmarks.separate)."""
    if "separate" in bench.recorded:
        return bench.report.previous["separate"]
    if not bench.report.args.get("separate", False):
        return {}
    settings = {k: v for k, v in bench.settings.items() if k != "data"}
    return train_separate(bench.settings["data"], bench.report.out / "separate", settings, bench.force, bench.n_boot)


def final_model_speed(bench: Hw2, states: dict[str, dict]) -> dict[str, Any]:
    """``speed`` (rows, ratios, machine) and ``speed_table`` of `yolo-unified benchmark` on seed 0's final model; a
    re-run keeps the ones an earlier invocation measured on the same weights file with the same settings."""
    if "default_seed0" in bench.recorded:  # its final model is not here to time
        return {"speed": bench.report.previous["speed"], "speed_table": bench.report.previous["speed_table"]}
    if not bench.report.args.get("speed", True):
        return {"speed": {}, "speed_table": ""}
    weights = states["default_seed0"]["stages"][-1]["weights"]
    settings = {
        "imgsz": int(bench.report.args.get("speed_imgsz", 64 if bench.report.quick else 512)),
        "runs": 3 if bench.report.quick else 50,
        "warmup": 1 if bench.report.quick else 10,
    }
    timed = {"weights_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest(), **settings}
    if bench.report.previous.get("speed", {}).get("timed") == timed:
        LOGGER.info(f"{colorstr('benchmarks.hw2:')} speed of seed 0's final model as timed before (same weights)")
        return {"speed": bench.report.previous["speed"], "speed_table": bench.report.previous["speed_table"]}
    speed = UnifiedYOLO(weights).benchmark(**settings, project=str(bench.report.out), name="speed", exist_ok=True)
    machine = {**speed["machine"], "model": repo_relative(speed["machine"]["model"])}
    return {
        "speed": {"rows": speed["rows"], "ratios": speed["ratios"], "machine": machine, "timed": timed},
        "speed_table": (Path(speed["save_dir"]) / "benchmark.md").read_text(),
    }


def joint_training(bench: Hw2, runs: dict[str, dict], separate: dict[str, dict]) -> dict[str, dict]:
    """With ``joint=True``, every task trained at once per balancing method (benchmarks.joint) and their plot."""
    if not bench.report.args.get("joint", False):
        return {}
    methods = listed(bench.report.args.get("joint_methods") or list(BALANCERS))
    quick, force = bench.report.quick, bench.force
    force = {**force, "task_args": {"cls": {"imgsz": force["imgsz"]}}} if quick else force
    single = {t: s["value"] for t, s in runs["baselines"]["final"].items()}
    seeds = int(bench.report.args.get("joint_seeds", 2))
    recorded = bench.report.previous.get("joint", {})
    joint = joint_runs(bench.report.out, bench.settings, force, methods, seeds, single, bench.n_boot, recorded)
    references = {"single-task": single}
    references["sequential (seed 0)"] = {t: s["value"] for t, s in runs["default_seed0"]["final"].items()}
    if separate:
        references["separate Ultralytics"] = {t: r["final"]["value"] for t, r in separate.items()}
    plot_joint(bench.report.out / "joint_scores.png", joint, references)
    return {n: {**r, "weights": repo_relative(r["weights"])} for n, r in joint.items()}


def add_deployed_scores(bench: Hw2, runs: dict[str, dict], joint: dict, separate: dict) -> None:
    """With ``deployed=True``, add each task's score as the predictor serves it (benchmarks.deployed) as ``deployed``
    to the default runs, the recipe's seed-0 joint run and the separate detector trained (not recorded) here."""
    if not bench.report.args.get("deployed", False):
        return
    data, n_boot, out = bench.settings["data"], bench.n_boot, bench.report.out
    for name in [n for n in runs if n.startswith("default") and n not in bench.recorded]:
        weights = out / name / "weights" / "best.pt"
        runs[name]["deployed"] = deployed_scores(str(weights), data, out / name / "deployed", n_boot=n_boot)
    recipe_runs = (n for n, r in joint.items() if r["seed"] == 0 and r["default"] and n not in bench.recorded)
    if recipe_run := next(recipe_runs, None):
        weights = repo_path(joint[recipe_run]["weights"])
        folder = out / recipe_run / "deployed"
        joint[recipe_run]["deployed"] = deployed_scores(str(weights), data, folder, n_boot=n_boot)
    if "det" in separate and "separate" not in bench.recorded:
        det = separate["det"]
        det["deployed"] = separate_deployed_detection(repo_path(det["weights"]), data, out / "separate", n_boot)


def runtime_accuracy(bench: Hw2, states: dict[str, dict]) -> dict[str, Any]:
    """With ``runtimes=True``, seed 0's final model's scores in every runtime, fp32 and INT8 (benchmarks.runtimes)."""
    runtimes = bench.report.previous.get("runtimes", {}) if "default_seed0" in bench.recorded else {}
    if runtimes or not bench.report.args.get("runtimes", False):
        return runtimes
    config = states["default_seed0"]["config"]
    imgsz = {s["task"]: {**config["common"], **s}.get("imgsz", 640) for s in config["stages"]}
    final_weights = states["default_seed0"]["stages"][-1]["weights"]
    return runtime_scores(final_weights, bench.settings["data"], imgsz, bench.report.out / "runtimes", bench.n_boot)


def run(report: Report) -> None:
    """The benchmark: the protocol runs, then the sections asked for; their records join results.json."""
    bench = start(report)
    states: dict[str, dict] = {}  # the protocol state of every run this call trained, resumed or skipped as finished
    runs = protocol_runs(bench, states)
    separate = separate_models(bench)
    speed = final_model_speed(bench, states)
    joint = joint_training(bench, runs, separate)
    add_deployed_scores(bench, runs, joint, separate)
    sections = {"separate": separate, "runtimes": runtime_accuracy(bench, states), "joint": joint}
    minutes = {s["save_dir"]: m for r in runs.values() for s, m in zip(r["stages"], r["stage_minutes"], strict=True)}
    report.results.update(
        budget=budget_text(bench.seq, bench.settings["imgsz"], bench.force),
        bootstrap=bench.n_boot,
        training_minutes=sum(minutes.values()),  # a stage shared by several runs counted once
        recorded=sorted(bench.recorded),  # kept from the earlier results.json: their weights were not here
        references={
            "seg_all_background": runs["baselines"]["final"].get("seg", {}).get("all_background", math.nan),
            "cls_chance": 1 / len(bench.names["cls"]) if "cls" in bench.names else math.nan,
        },
        runs=runs,
        **{name: section for name, section in sections.items() if section},
        **speed,
    )


def forgetting_text(d: dict | None) -> str:
    """Relative and absolute forgetting of a task."""
    return f"{d['relative']:+.1%} ({d['points']:+.2f} pts)" if d else ""


def overview(results: dict) -> list[str]:
    """The summary's budget, training times, runs kept as recorded and score references."""
    kept, references = results.get("recorded"), results["references"]
    recorded = (
        [f"- kept as recorded by earlier invocations (their weights were not here): {', '.join(kept)}"] if kept else []
    )
    return [
        f"- budget: {results['budget']}",
        f"- training time of the protocol runs and baselines: {results['training_minutes']:.1f} min (every stage once, "
        "from Ultralytics' results.csv; the separate and joint runs' are in their tables)",
        *recorded,
        f"- scores: final value [95% bootstrap interval over the val images, {results['bootstrap']} resamples]; "
        f"references: all-background mIoU {references['seg_all_background']:.4f}, chance top-1 "
        f"{references['cls_chance']:.4f}, chance mAP50 ~0",
    ]


def baselines_table(results: dict) -> list[str]:
    """The single-task baselines' scores."""
    return [
        "## Single-task baselines (each task alone, same epochs and image size)",
        "",
        "| task | score |",
        "|---|---|",
        *(f"| {t} {METRIC_NAME[t]} | {score_text(s)} |" for t, s in results["runs"]["baselines"]["final"].items()),
    ]


def protocol_reports(results: dict) -> list[str]:
    """The forgetting report of each default run, as the protocol wrote it (its title and first line left out)."""
    lines = [f"## Sequential protocol ({results.get('protocol', 'cfg/seq.yaml')})"]
    for name in [n for n in results["runs"] if n.startswith("default")]:
        report = (repo_path(results["runs"][name]["root"]) / "forgetting.md").read_text()
        lines += ["", f"### {name}", "", report.split("\n\n", 2)[2]]
    return lines


def final_scores_table(results: dict) -> list[str]:
    """Final scores, forgetting, verdict and training time of every sequential run."""
    runs = results["runs"]
    lines = [
        f"## Final scores (each a full seg -> det -> cls run; limit {results['forget_limit']:.0%} relative forgetting)",
        "",
        "| run | mIoU | mAP50 | top-1 | seg forgetting | det forgetting | verdict | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in (run for name, run in runs.items() if name != "baselines"):
        f, d = run["final"], run["forgetting"]
        cells = [*(score_text(f.get(t)) for t in TASKS), forgetting_text(d.get("seg")), forgetting_text(d.get("det"))]
        lines.append(f"| {run['label']} | {' | '.join(cells)} | {run['verdict']} | {sum(run['stage_minutes']):.1f} |")
    return lines


def separate_table(results: dict) -> list[str]:
    """The separate Ultralytics models against the unified model's single-task baselines (when they ran); with
    pretrained weights two runs per task (all layers trained, pretrained layers frozen) in a "run" column, the kept
    one marked."""
    if not (separate := results.get("separate")):
        return []
    baselines, speed_rows = results["runs"]["baselines"]["final"], results["speed"].get("rows")
    two_runs = any(len(r.get("runs", {})) > 1 for r in separate.values())
    rows = []
    for t, r in separate.items():
        for name, run in r.get("runs", {"trained": r}).items():  # a record from before the frozen runs: one run
            label = f"{run['label']}{' (kept)' if name == r['kept'] else ''} | " if two_runs else ""
            minutes = f"{run['minutes']:.1f}" if "minutes" in run else "n/a"  # older records: the call's time only
            rows.append(
                f"| {t} {METRIC_NAME[t]} | {r['model']} | {r['params'] / 1e6:.2f} | {label}"
                f"{score_text(run['final'])} | {score_text(baselines.get(t))} | {minutes} |"
            )
    note = (
        " With pretrained weights each separate model is also trained with its pretrained layers frozen (the unified "
        "model's pretrained backbone learns at a tenth of the rate); the better run by the task's score is kept, "
        "and is the one the other sections compare."
    )
    column, rule, kept = ("run | ", "---|", note) if two_runs else ("", "", "")
    unified = f"; the unified model: {speed_rows[0]['params'] / 1e6:.2f} M for all three tasks" if speed_rows else ""
    return [
        "## Separate Ultralytics models (one per task: what a user would otherwise train, same budgets and starting "
        "weights (pretrained or not) as the single-task baselines)",
        "",
        f"| task | Ultralytics model | params (M) | {column}score | unified model, this task alone | minutes |",
        f"|---|---|---:|{rule}---|---|---:|",
        *rows,
        "",
        f"Summed parameters of the separate models: {sum(r['params'] for r in separate.values()) / 1e6:.2f} M{unified}."
        f"{kept}",
    ]


def joint_table(results: dict) -> list[str]:
    """The joint runs' scores, delta_m, training time and memory, and their plot (when they ran)."""
    if not (joint := results.get("joint")):
        return []
    lines = [
        f"## Joint training ({next(iter(joint.values()))['recipe']}, the protocol's optimizer steps per task; one run "
        "per balancing method at seed 0, the recipe's own method with more seeds; delta_m: mean relative change "
        "against the single-task baselines)",
        "",
        "| run | balance | mIoU | mAP50 | top-1 | delta_m vs single-task | minutes | peak RSS (MB) |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for name, r in joint.items():
        peak = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
        cells = " | ".join(score_text(r["final"].get(t)) for t in TASKS)
        lines.append(f"| {name} | {r['method']} | {cells} | {r['delta_m']:+.1f}% | {r['minutes']:.1f} | {peak} |")
    return [*lines, "", "![joint](joint_scores.png)"]


def deployed_table(results: dict) -> list[str]:
    """Validator against deployed-path scores of every run scored on the deployed path (when there is one)."""
    deployed = {run["label"]: run for run in results["runs"].values() if run.get("deployed")}
    deployed |= {name: run for name, run in results.get("joint", {}).items() if run.get("deployed")}
    if not deployed:
        return []
    lines = [
        "## Deployed path (each task as `yolo-unified predict` serves it: one letterboxed pass at the model's image "
        "size, the predictor's NMS with one class per box at conf 0.25; benchmarks.deployed)",
        "",
        "| run | mIoU: validator / deployed | mAP50: validator / deployed | top-1: validator / deployed |",
        "|---|---|---|---|",
    ]
    for label, run in deployed.items():
        cells = (f"{score_text(run['final'].get(t))} / {score_text(run['deployed'].get(t))}" for t in TASKS)
        lines.append(f"| {label} | {' | '.join(cells)} |")
    if (det := results.get("separate", {}).get("det", {})).get("deployed"):
        lines += [
            "",
            f"The separate YOLOv8n detector the same way: mAP50 {score_text(det['final'])} (validator) / "
            f"{score_text(det['deployed'])} (its predictor's NMS); the separate segmentation and classification "
            "models predict as they validate.",
        ]
    return lines


def efficiency(results: dict) -> list[str]:
    """Training time per stage of the default protocol (seed 0)."""
    default = results["runs"]["default_seed0"]
    stages = zip(default["stages"], default["stage_minutes"], strict=True)
    stage_times = ", ".join(f"{s['task']} {m:.1f} min" for s, m in stages)
    return ["## Efficiency", "", f"Training time per stage of the default protocol (seed 0): {stage_times}."]


def targets_table(results: dict) -> list[str]:
    """The homework's latency targets against the ratios of the speed section (a record from before the product
    measured ratios has its targets in its speed table)."""
    if not (ratios := results.get("speed", {}).get("ratios")):
        return []
    lines = ["| target | value | met |", "|---|---:|:---:|"]
    for name, value in ratios.items():
        goal, met = SPEED_TARGETS[name]
        lines.append(f"| {name} {goal} | {value} | {'yes' if met(value) else 'NO'} |")
    return lines


def tables(results: dict) -> list[list[str]]:
    """The summary after its header: overview, every table, the speed section and the published figures."""
    tables = (baselines_table, protocol_reports, final_scores_table, separate_table, runtimes_table, joint_table)
    speed = [results["speed_table"]] if results["speed_table"] else []
    return [overview(results), *(table(results) for table in tables), deployed_table(results), efficiency(results),
            speed, targets_table(results), [PUBLISHED]]  # fmt: skip


BENCHMARK = Benchmark("benchmarks.hw2", KEYS, "benchmarks/results/hw2-320", "HW2 benchmark ({regime})", run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
