"""The HW2 benchmark: single-task baselines, the sequential protocol (two seeds) and the ablation table, resumable.

    python -m benchmarks.hw2 data=../shared/data/hw2 imgsz=320 out=benchmarks/results/hw2-320
    python -m benchmarks.hw2 ... pretrained=../shared/weights/yolov8n-cls-imagenette.pt   # the pretrained regime
    python -m benchmarks.hw2 ... ablations=False   # baselines and the default protocol only (a second regime)
    python -m benchmarks.hw2 ... separate=True     # adds the three separate Ultralytics models (benchmarks.separate)
    python -m benchmarks.hw2 ... runtimes=True     # adds the final model's accuracy per runtime (benchmarks.runtimes)
    python -m benchmarks.hw2 ... deployed=True     # adds the deployed path's scores (benchmarks.deployed)
    python -m benchmarks.hw2 ... joint=True [joint_methods=fixed,pcgrad] [joint_seeds=2]  # adds joint training
    python -m benchmarks.hw2 ... recorded=True     # extends a committed benchmark whose weights are not here
    python -m benchmarks.hw2 data=datasets/unified-synth.yaml quick=True out=/tmp/quick    # a smoke run, minutes

``data`` is the raw HW2 folder (converted into ``datasets/hw2`` first, as ``yolo-unified data prepare`` does) or a
multi-task data YAML. Every run is a protocol run under ``<out>/<name>``: a killed benchmark re-run with the same
command skips finished runs and stages and resumes the interrupted one. A clone of the repository holds a committed
benchmark's reports but not its weights: with ``recorded=True`` the runs (and sections) that results.json records and
whose weights are not here are kept as recorded, not re-run, and only the rest are trained; the summary names them.
The single-task baselines and the ablation runs share the first (segmentation) stage of the seed-0 default run: it is
the same training in all of them (the strategies act from stage 2 on, and the segmentation baseline has the same
settings). The protocol is the one `yolo-unified train` recommends: cfg/seq.yaml, or cfg/seq-pretrained.yaml with
``pretrained=`` (its first stage trains the backbone at a tenth of the rate, and so does the segmentation baseline it
shares). ``quick=True`` shrinks every stage (64 px, one epoch, 5% of the training images) to check that the whole
pipeline produces its files.

Output in ``out``: ``summary.md`` (every table, with the machine, command, commit, date and wall times),
``results.json`` (every number), the runs' own reports and plots, and the speed table of ``yolo-unified benchmark``.
Scores come with 95% bootstrap intervals over the validation images and with the all-background / chance
references; the default protocol runs with two seeds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.utils import LOGGER, YAML, colorstr
from ultralytics.utils.torch_utils import get_cpu_info

from benchmarks.bootstrap import bootstrapped
from yolo_unified.cli import parse_args
from yolo_unified.continual import STRATEGIES
from yolo_unified.continual.protocol import STATE_FILE, save_atomically
from yolo_unified.continual.report import forgetting, unlearned_stages, verdict, write_report
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.engine import recommended_protocol, train
from yolo_unified.nn.tasks import CFG_DIR

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LATER_STAGES = {  # settings of the strategies the default combination leaves out after stage 1, for their own rows
    "ewc": {"lam": 10.0, "samples": 64},  # mean-normalised Fisher (the committed ablations used lam 1000 on raw ones)
    "lwf": {"weight": 1.0, "temperature": 2.0},
    "replay": {"size": 10, "batch": 2, "weight": 1.0},
    "pseudo_label": {"weight": 1.0, "conf": 0.25},
    "feat_distill": {"weight": 10.0},
    "bn_freeze": True,
}
QUICK = {"imgsz": 64, "epochs": 1, "batch": 8, "nbs": 8, "fraction": 0.05, "workers": 0, "plots": False}
ABLATIONS = [  # name, row label, strategy keys kept from cfg/seq.yaml, staged (per-stage) learning rates
    ("finetune", "no mitigation (plain fine-tuning)", (), False),
    ("staged_lr", "+ staged LR", (), True),
    ("clip", "+ gradient clipping", ("clip_grad",), True),
    ("module_lr", "+ per-module LR", ("clip_grad", "lr_mult"), True),
    ("bn_freeze", "+ BN freezing", ("clip_grad", "lr_mult", "bn_freeze"), True),
    ("ewc", "EWC alone", ("ewc",), False),
    ("lwf", "LwF alone", ("lwf",), False),
    ("replay", "replay alone", ("replay",), False),
    ("pseudo_label", "pseudo-labels alone", ("pseudo_label",), False),
    ("feat_distill", "feature distillation alone", ("feat_distill",), False),
]
TASK_METRIC = {"seg": "mIoU", "det": "mAP50", "cls": "top-1"}
PUBLISHED = """Published figures for this protocol (not re-run here; pretrained backbones on a GPU):
- report A (MobileNetV3-S, 4.39M params): after stage 3 mIoU 30.01, mAP 47.05, top-1 15.00; forgetting 4.78% / 0.00% /
  0.00%; 1.90 ms on a T4;
- report B (YOLOv8n layers 0-9 + FPN + EWC, 1.01M params): mIoU 13.41, mAP 0.000004, top-1 36.67; 18 s per sample."""


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it, else unchanged: outputs hold no machine's paths."""
    inside = Path(path).is_absolute() and Path(path).is_relative_to(REPO)
    return str(Path(path).relative_to(REPO)) if inside else str(path)


def repo_path(path: str | Path) -> Path:
    """A recorded path as a usable one: a relative path is taken from the repository root, an absolute one kept."""
    return REPO / path


def with_stage_paths(stages: list[dict], convert: Callable[[str | Path], str | Path]) -> list[dict]:
    """Protocol stage entries with their ``weights`` and ``save_dir`` passed through `convert`."""
    return [{**s, "weights": str(convert(s["weights"])), "save_dir": str(convert(s["save_dir"]))} for s in stages]


def ablation_cfg(seq: dict, keep: tuple[str, ...], staged: bool) -> dict:
    """cfg/seq.yaml with only the strategies in `keep`; without `staged`, every stage uses the first stage's LR."""
    cfg = deepcopy(seq)
    first = cfg["stages"][0]
    for i, stage in enumerate(cfg["stages"]):
        for key in STRATEGIES:
            if key not in keep:
                stage.pop(key, None)
        if "clip_grad" not in keep:
            stage["clip_grad"] = 10.0  # Ultralytics' own fixed clipping
        for key, settings in LATER_STAGES.items():
            if key in keep and i > 0 and not stage.get(key):
                stage[key] = settings
        if not staged:
            stage["lr0"], stage["lrf"] = first["lr0"], first["lrf"]
    return cfg


def run_protocol(cfg: dict, root: Path, common: dict, force: dict) -> tuple[dict, float]:
    """Run the protocol `cfg` in `root`; return its state and this call's wall time.

    The protocol itself skips the stages ``protocol.json`` records as done and resumes an interrupted one. The stage
    paths of the returned state are absolute (a rewritten, committed ``protocol.json`` holds repository-relative ones).
    """
    t0 = time.time()
    state = train(**{**cfg, **common}, project=str(root.parent), name=root.name, exist_ok=True, force=force)
    return {**state, "stages": with_stage_paths(state["stages"], repo_path)}, time.time() - t0


def share_first_stage(root: Path, source: dict) -> None:
    """Start the run in `root` with the first stage of the finished run `source` (a protocol state) already done.

    Every run of the benchmark trains the same first stage (the mitigation strategies act from stage 2 on; the Fisher
    and replay images a stage 1 leaves are simply unused by runs without EWC or replay), so it is trained once and
    shared; the run then starts from its weights and memory as a protocol resumed after stage 1 would.
    """
    state_file = root / STATE_FILE
    if not state_file.is_file():  # written as the protocol writes it: a kill never leaves half a file
        root.mkdir(parents=True, exist_ok=True)
        save_atomically({"stages": source["stages"][:1]}, state_file)


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


def fmt(entry: dict | None, digits: int = 4) -> str:
    """``value [lo, hi]`` of a bootstrapped score."""
    if not entry:
        return ""
    lo, hi = entry["ci95"]
    return f"{entry['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def drop(d: dict | None) -> str:
    """Relative and absolute forgetting of a task."""
    return f"{d['relative']:+.1%} ({d['points']:+.2f} pts)" if d else ""


def training_minutes(run: Path) -> float:
    """Training wall time of an Ultralytics run folder in minutes, from its results.csv (elapsed seconds column).

    Ultralytics restarts that clock when a run resumes: a drop marks a resume, and each stretch's last value counts
    (a resume after the very first epoch can go unnoticed, missing that epoch's time).
    """
    rows = (run / "results.csv").read_text().strip().splitlines()[1:]
    elapsed = [float(row.split(",")[1]) for row in rows]
    ends = [t for t, following in zip(elapsed, elapsed[1:], strict=False) if following < t]
    return (sum(ends) + elapsed[-1]) / 60 if elapsed else 0.0


def stage_minutes(state: dict) -> list[float]:
    """Training wall time of each stage of a protocol in minutes."""
    return [training_minutes(Path(s["save_dir"])) for s in state["stages"]]


def finished_run(last: Path) -> bool:
    """Whether an Ultralytics run's last.pt is that of a finished training (Ultralytics strips it: epoch -1)."""
    return last.is_file() and torch.load(last, map_location="cpu", weights_only=False).get("epoch") == -1


def run_verdict(state: dict, limit: float) -> str:
    """The report's PASS/FAIL, naming the stages that kept no weights."""
    if unlearned := unlearned_stages(state):
        return f"{verdict(state, limit)} (stage {', '.join(unlearned)} kept no weights)"
    return verdict(state, limit)


def budget(seq: dict, imgsz: int, force: dict) -> str:
    """Epochs and image size of each stage of the default protocol, as trained (after any quick-mode override)."""
    stages = [{"imgsz": imgsz, **stage, **force} for stage in seq["stages"]]
    return ", ".join(f"{s['task']} {s['epochs']} epochs at {s['imgsz']} px" for s in stages)


def git_commit() -> str:
    """The checked-out commit, marked when tracked files other than benchmark outputs have uncommitted changes."""
    try:
        git = {"cwd": REPO, "capture_output": True, "text": True}
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout
        code = [".", f":!{RESULTS.relative_to(REPO)}"]  # committed benchmark results are outputs, not code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *code], **git).stdout
        return rev.strip() + (" (uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def recorded_command(argv: list[str], module: str = "benchmarks.hw2") -> str:
    """The command line of `module`, its absolute paths inside the repository made relative to it."""
    tokens = (f"{key}={repo_relative(value)}" for key, _, value in (token.partition("=") for token in argv))
    return f"python -m {module} " + " ".join(tokens)


def common_args(args: dict, seq: dict) -> dict:
    """The keys every run of a benchmark gets: ``data`` (a raw HW2 folder is converted into datasets/hw2 first, as
    ``yolo-unified data prepare`` does), ``imgsz`` (default: cfg/seq.yaml's) and ``pretrained`` when given."""
    data = str(args.get("data", "../shared/data/hw2"))
    if not data.endswith((".yaml", ".yml")):
        from yolo_unified.data.prepare import prepare_hw2

        prepare_hw2(data, REPO / "datasets/hw2")
        data = str(REPO / "datasets/hw2.yaml")
    common = {"data": data, "imgsz": int(args.get("imgsz", seq.get("imgsz", 320)))}
    if args.get("pretrained"):
        common["pretrained"] = str(args["pretrained"])
    return common


def machine_info() -> dict[str, Any]:
    """The CPU, its logical cores and the versions of torch, Ultralytics and Python."""
    return {
        "cpu": get_cpu_info(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "ultralytics": ultralytics_version,
        "python": platform.python_version(),
    }


def machine_text(m: dict[str, Any]) -> str:
    """The summary line of `machine_info`."""
    return (
        f"machine: {m['cpu']}, {m['logical_cores']} logical cores, no GPU; torch {m['torch']}, "
        f"ultralytics {m['ultralytics']}, Python {m['python']}"
    )


def invocation(t0: float, commit: str) -> dict[str, Any]:
    """This invocation of a benchmark command: date, commit, wall time since `t0` and peak memory of the process."""
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    date, wall = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), (time.time() - t0) / 60
    return {"date": date, "commit": commit, "wall_minutes": wall, "peak_rss_mb": peak_rss_mb}


def invocation_text(i: dict[str, Any]) -> str:
    """One `invocation` as the summaries list it."""
    peak = f"{i['peak_rss_mb']:.0f} MB" if i["peak_rss_mb"] else "peak not recorded"
    return f"{i['date']}, commit {i['commit']}: {i['wall_minutes']:.1f} min, {peak}"


def weightless(results: dict) -> set[str]:
    """The runs and sections of a benchmark's `results` whose weights are not in this checkout.

    Names: a protocol run's (``default_seed0``, ``baselines``, ...), a joint run's, ``separate`` for the separate
    Ultralytics models.
    """
    files = {name: [s["weights"] for s in run["stages"]] for name, run in results.get("runs", {}).items()}
    files |= {name: [run["weights"]] for name, run in results.get("joint", {}).items()}
    if separate := results.get("separate"):
        files["separate"] = [r["weights"] for r in separate.values()]
    return {name for name, paths in files.items() if not all(repo_path(p).is_file() for p in paths)}


def summary_markdown(results: dict) -> str:
    """All tables of the benchmark as Markdown."""
    m, runs, kept = results["machine"], results["runs"], results.get("recorded")
    recorded = (
        [f"- kept as recorded by earlier invocations (their weights were not here): {', '.join(kept)}"] if kept else []
    )
    limit = results["forget_limit"]
    lines = [
        f"# HW2 benchmark ({results['regime']})",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}, commit {results['commit']}",
        f"- {machine_text(m)}",
        f"- budget: {results['budget']}",
        f"- training time of the protocol runs and baselines: {results['training_minutes']:.1f} min (every stage once, "
        "from Ultralytics' results.csv; the separate and joint runs' are in their tables)"
        "; each invocation of the command (a re-run skips finished training): wall time, peak memory: "
        + "; ".join(invocation_text(i) for i in results["invocations"]),
        *recorded,
        f"- scores: final value [95% bootstrap interval over the val images, {results['bootstrap']} resamples]; "
        f"references: all-background mIoU {results['references']['seg_all_background']:.4f}, chance top-1 "
        f"{results['references']['cls_chance']:.4f}, chance mAP50 ~0",
        "",
        "## Single-task baselines (each task alone, same epochs and image size)",
        "",
        "| task | score |",
        "|---|---|",
        *(f"| {t} {TASK_METRIC[t]} | {fmt(s)} |" for t, s in runs["baselines"]["final"].items()),
        "",
        f"## Sequential protocol ({results.get('protocol', 'cfg/seq.yaml')})",
    ]
    for name in [n for n in runs if n.startswith("default")]:
        report = (repo_path(runs[name]["root"]) / "forgetting.md").read_text()
        lines += ["", f"### {name}", "", report.split("\n\n", 2)[2]]
    table = "Ablations" if any(n in runs for n, *_ in ABLATIONS) else "Final scores"  # ablations=False: no ablation
    lines += [
        "",
        f"## {table} (each a full seg -> det -> cls run; limit {limit:.0%} relative forgetting)",
        "",
        "| run | mIoU | mAP50 | top-1 | seg forgetting | det forgetting | verdict | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        if name == "baselines":
            continue
        f, d = run["final"], run["forgetting"]
        cells = [fmt(f.get("seg")), fmt(f.get("det")), fmt(f.get("cls")), drop(d.get("seg")), drop(d.get("det"))]
        lines.append(f"| {run['label']} | {' | '.join(cells)} | {run['verdict']} | {sum(run['stage_minutes']):.1f} |")
    if separate := results.get("separate"):
        unified = results["speed"]["rows"][0]["params"]
        lines += [
            "",
            "## Separate Ultralytics models (one per task: what a user would otherwise train, same budgets and "
            "starting weights (pretrained or not) as the single-task baselines)",
            "",
            "| task | Ultralytics model | params (M) | score | unified model, this task alone | minutes |",
            "|---|---|---:|---|---|---:|",
            *(
                f"| {t} {TASK_METRIC[t]} | {r['model']} | {r['params'] / 1e6:.2f} | {fmt(r['final'])} | "
                f"{fmt(runs['baselines']['final'].get(t))} | {r['minutes']:.1f} |"
                for t, r in separate.items()
            ),
            "",
            f"Summed parameters of the separate models: {sum(r['params'] for r in separate.values()) / 1e6:.2f} M; "
            f"the unified model: {unified / 1e6:.2f} M for all three tasks.",
        ]
    if runtimes := results.get("runtimes"):
        lines += [
            "",
            "## Accuracy per runtime (the default protocol's final model, seed 0; INT8 calibrated on the val images "
            "of every task)",
            "",
            "| runtime | mIoU | mAP50 | top-1 |",
            "|---|---|---|---|",
            *(
                f"| {label} | {' | '.join(fmt(scores.get(t)) for t in ('seg', 'det', 'cls'))} |"
                for label, scores in runtimes.items()
                if label != "openvino_precision"
            ),
            "",
            f"OpenVINO runs its fp32 model at its CPU plugin's default precision: {runtimes['openvino_precision']}.",
        ]
    if joint := results.get("joint"):
        from benchmarks.joint import joint_markdown

        lines += [
            "",
            f"## Joint training ({next(iter(joint.values()))['recipe']}, the protocol's optimizer steps per task; one "
            "run per balancing method at seed 0, the recipe's own method with more seeds; delta_m: mean relative "
            "change against the single-task baselines)",
            "",
            *joint_markdown(joint, fmt),
            "",
            "![joint](joint_scores.png)",
        ]
    deployed = {run["label"]: run for run in runs.values() if run.get("deployed")}
    deployed.update({name: run for name, run in (joint or {}).items() if run.get("deployed")})
    if deployed:
        lines += [
            "",
            "## Deployed path (each task as `yolo-unified predict` serves it: one letterboxed pass at the model's "
            "image size, the predictor's NMS with one class per box at conf 0.25; benchmarks.deployed)",
            "",
            "| run | mIoU: validator / deployed | mAP50: validator / deployed | top-1: validator / deployed |",
            "|---|---|---|---|",
            *(
                f"| {label} | "
                + " | ".join(
                    f"{fmt(run['final'].get(t))} / {fmt(run['deployed'].get(t))}" for t in ("seg", "det", "cls")
                )
                + " |"
                for label, run in deployed.items()
            ),
        ]
        if (det := (results.get("separate") or {}).get("det", {})).get("deployed"):
            lines += [
                "",
                f"The separate YOLOv8n detector the same way: mAP50 {fmt(det['final'])} (validator) / "
                f"{fmt(det['deployed'])} (its predictor's NMS); the separate segmentation and classification models "
                "predict as they validate.",
            ]
    default = runs.get("default_seed0")
    stage_times = ", ".join(
        f"{s['task']} {m:.1f} min" for s, m in zip(default["stages"], default["stage_minutes"], strict=True)
    )
    lines += ["", "## Efficiency", "", f"Training time per stage of the default protocol (seed 0): {stage_times}."]
    lines += ["", results["speed_table"], "", PUBLISHED, ""]
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    """Run the benchmark for command-line tokens `argv` (``key=value``); return the results dict."""
    args = parse_args(argv)
    keys = {"data", "imgsz", "out", "quick", "pretrained", "seeds", "bootstrap", "speed_imgsz", "ablations", "separate"}
    keys |= {"runtimes", "deployed", "joint", "joint_methods", "joint_seeds", "recorded"}
    if unknown := set(args) - keys:
        raise SyntaxError(f"unknown key(s) {sorted(unknown)} for benchmarks.hw2")
    quick, t0, commit = bool(args.get("quick", False)), time.time(), git_commit()  # the code that runs
    out = Path(args.get("out", "benchmarks/results/hw2-320")).resolve()
    protocol = recommended_protocol(args.get("pretrained"))  # as `yolo-unified train` picks it
    seq = YAML.load(protocol)
    common = common_args(args, seq)
    data = common["data"]
    names = task_names(load_data_config(data))
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    gone = weightless(previous)
    if gone and not args.get("recorded", False):
        raise FileNotFoundError(
            f"{out} holds a benchmark whose weights are not here ({', '.join(sorted(gone))}; a clone of the repository "
            "has only the reports): pass recorded=True to keep those runs as recorded and train only the rest, or a "
            "new out= to run it all again"
        )
    force = dict(QUICK) if quick else {}
    limit = float(seq.get("forget_limit", 0.05))
    n_boot = int(args.get("bootstrap", 50 if quick else 1000))

    # seed 0 first: the baselines and the ablations start from its first stage (the same training in all of them)
    label = f"default combination (cfg/{protocol.name}), seed {{}}"
    plan = [("default_seed0", label.format(0), {**seq, "seed": 0})]
    plan.append(("baselines", "single-task baselines", YAML.load(CFG_DIR / "baselines.yaml")))
    plan += [(f"default_seed{i}", label.format(i), {**seq, "seed": i}) for i in range(1, int(args.get("seeds", 2)))]
    if args.get("ablations", True):
        plan += [(name, label, ablation_cfg(seq, keep, staged)) for name, label, keep, staged in ABLATIONS]

    runs: dict[str, dict] = {}
    states: dict[str, dict] = {}
    for name, label, cfg in plan:
        LOGGER.info(f"\n{colorstr('bold', 'benchmarks.hw2')}: {name} ({label})")
        if name in gone:
            runs[name] = previous["runs"][name]
            continue
        root, baselines = out / name, out / "baselines"
        if name == "default_seed0":
            pass
        elif name.startswith("default"):
            cfg = {**cfg, "baselines": str(baselines)}
        elif "default_seed0" in gone:
            raise FileNotFoundError(f"{name} starts from default_seed0's first stage, whose weights are not here")
        else:
            share_first_stage(root, states["default_seed0"])
        state, seconds = run_protocol(cfg, root, common, force)
        states[name] = state
        if name == "baselines" and "default_seed0" in states:  # now seed 0's report can have its retention row
            write_report(out / "default_seed0", states["default_seed0"], limit, baselines=str(baselines))
        final = final_scores(state, data, names, root, n_boot)
        runs[name] = {
            "label": label,
            "root": repo_relative(root),
            "final": final,
            "forgetting": forgetting(state, limit) if name != "baselines" else {},
            "verdict": run_verdict(state, limit) if name != "baselines" else "",
            "stage_minutes": stage_minutes(state),
            "wall_minutes_this_call": seconds / 60,
            "stages": with_stage_paths(state["stages"], repo_relative),
        }

    separate = previous["separate"] if "separate" in gone else {}
    if args.get("separate", False) and not separate:  # the three Ultralytics models a user would otherwise train
        from benchmarks.separate import train_separate

        shared = {k: v for k, v in common.items() if k != "data"}
        separate = train_separate(data, out / "separate", shared, force, n_boot)
        separate = {t: {**r, "weights": repo_relative(r["weights"])} for t, r in separate.items()}

    from yolo_unified.benchmark import benchmark

    if "default_seed0" in gone:  # its final model is not here to time
        speed, speed_table = previous["speed"], previous["speed_table"]
    else:
        speed = benchmark(
            states["default_seed0"]["stages"][-1]["weights"],
            imgsz=int(args.get("speed_imgsz", 64 if quick else 512)),
            runs=3 if quick else 50,
            warmup=1 if quick else 10,
            project=str(out),
            name="speed",
            exist_ok=True,
        )
        speed_table = (Path(speed["save_dir"]) / "benchmark.md").read_text()
    joint = {}
    if args.get("joint", False):  # every task at once, per balancing method (benchmarks.joint)
        from benchmarks.joint import joint_runs, plot_joint
        from yolo_unified.balancing import BALANCERS

        methods = args.get("joint_methods") or ",".join(BALANCERS)
        methods = [m.strip() for m in str(methods).strip("[]").split(",") if m.strip()]
        joint_force = {**force, "task_args": {"cls": {"imgsz": force["imgsz"]}}} if quick else force
        single = {t: s["value"] for t, s in runs["baselines"]["final"].items()}
        kept = {name: previous["joint"][name] for name in gone if name in previous.get("joint", {})}
        joint = joint_runs(out, common, joint_force, methods, int(args.get("joint_seeds", 2)), single, n_boot, kept)
        references = {"single-task": single}
        references["sequential (seed 0)"] = {t: s["value"] for t, s in runs["default_seed0"]["final"].items()}
        if separate:
            references["separate Ultralytics"] = {t: r["final"]["value"] for t, r in separate.items()}
        plot_joint(out / "joint_scores.png", joint, references)
        joint = {n: {**r, "weights": repo_relative(r["weights"])} for n, r in joint.items()}

    if args.get("deployed", False):  # each task as the predictor serves it: one pass at the model's image size
        from benchmarks.deployed import checkpoint_imgsz, deployed_scores, separate_deployed_detection

        for name in [n for n in runs if n.startswith("default") and n not in gone]:
            final = out / name / "weights" / "best.pt"
            folder = out / name / "deployed"
            runs[name]["deployed"] = deployed_scores(str(final), data, checkpoint_imgsz(final), folder, n_boot)
        recipe_runs = (n for n, r in joint.items() if r["seed"] == 0 and r["default"] and n not in gone)
        if default_joint := next(recipe_runs, None):
            weights = repo_path(joint[default_joint]["weights"])
            folder = out / default_joint / "deployed"
            joint[default_joint]["deployed"] = deployed_scores(
                str(weights), data, checkpoint_imgsz(weights), folder, n_boot
            )
        if "det" in separate and "separate" not in gone:
            det = separate["det"]
            det["deployed"] = separate_deployed_detection(repo_path(det["weights"]), data, out / "separate", n_boot)

    runtimes = previous.get("runtimes", {}) if "default_seed0" in gone else {}
    if args.get("runtimes", False) and not runtimes:  # the final model's accuracy in every runtime, fp32 and INT8
        from benchmarks.runtimes import runtime_scores

        config = states["default_seed0"]["config"]
        imgsz = {s["task"]: {**config["common"], **s}.get("imgsz", 640) for s in config["stages"]}
        final_weights = states["default_seed0"]["stages"][-1]["weights"]
        runtimes = runtime_scores(final_weights, data, imgsz, out / "runtimes", n_boot)
    record = invocation(t0, commit)
    minutes = {s["save_dir"]: m for r in runs.values() for s, m in zip(r["stages"], r["stage_minutes"], strict=True)}
    results = {
        "regime": f"pretrained={common['pretrained']}" if "pretrained" in common else "from scratch",
        "command": recorded_command(argv),
        "date": record["date"],
        "commit": commit,
        "protocol": f"cfg/{protocol.name}",
        "budget": budget(seq, common["imgsz"], force),
        "machine": machine_info(),
        "quick": quick,
        "forget_limit": limit,
        "bootstrap": n_boot,
        "training_minutes": sum(minutes.values()),  # a stage shared by several runs counted once
        "invocations": [*previous.get("invocations", []), record],
        "recorded": sorted(gone),  # kept from the earlier results.json: their weights were not here
        "references": {
            "seg_all_background": runs["baselines"]["final"].get("seg", {}).get("all_background", math.nan),
            "cls_chance": 1 / len(names["cls"]) if "cls" in names else math.nan,
        },
        "runs": runs,
        **({"separate": separate} if separate else {}),
        **({"runtimes": runtimes} if runtimes else {}),
        **({"joint": joint} if joint else {}),
        "speed": {
            "rows": speed["rows"],
            "checks": speed["checks"],
            "machine": {**speed["machine"], "model": repo_relative(speed["machine"]["model"])},
        },
        "speed_table": speed_table,
    }
    write_outputs(out, results, summary_markdown(results), "benchmarks.hw2")
    return results


def write_outputs(out: Path, results: dict, summary: str, command: str) -> None:
    """Write a benchmark's ``results.json`` and ``summary.md`` into `out` and say where."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "summary.md").write_text(summary)
    LOGGER.info(f"{colorstr('bold', command)}: {out / 'summary.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
