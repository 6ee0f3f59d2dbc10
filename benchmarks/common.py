"""What the benchmarks share: the command and output step (`Benchmark`, `run_benchmark`, `Report`), the run planner
(`Run`, `execute`, `protocol_run`), paths, quick mode and table helpers. With benchmarks.bootstrap the bottom of
benchmarks/: it imports no other benchmark module."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, YAML, colorstr

from yolo_unified.cli import parse_args
from yolo_unified.common import STATE_FILE, TASK_TABLE
from yolo_unified.data.config import load_data_config, task_data
from yolo_unified.data.prepare import prepare_hw2
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.speed import machine_info, reset_peak_rss, rss_mb
from yolo_unified.workflows import train
from yolo_unified.workflows.protocol import read_state, recommended_protocol
from yolo_unified.workflows.report import unlearned_stages, verdict

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICK = {"imgsz": 64, "epochs": 1, "batch": 8, "nbs": 8, "fraction": 0.05, "workers": 0, "plots": False}
GITIGNORE = """\
# Written by benchmarks.common.Report: a benchmark's folder commits its evidence (summary.md, results.json, plots,
# the speed table, each protocol run's forgetting.md and protocol.json, a run's scores.json), not its working files.
*
!*/
!.gitignore
!/summary.md
!/results.json
!/*.png
!/*/benchmark.md
!/*/forgetting.md
!/*/protocol.json
!/*/scores.json
"""
METRIC_NAME = {  # task -> its primary metric as the tables name it (mIoU, mAP50, top-1): the report's column of it
    task: next(column for column, metric in info.report_columns if metric == info.primary_metric)
    for task, info in TASK_TABLE.items()
}


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


def ultralytics_data(data: str, task: str, out: Path) -> str:
    """The task's data as Ultralytics' own trainer reads it: a dataset YAML written into `out` (seg, det), or the
    classification root folder that holds the ``train`` and ``val`` folders (cls)."""
    section = task_data(load_data_config(data), task)
    if task == "cls":
        root = Path(section["train"]).parent
        if Path(section["val"]).parent != root:
            raise ValueError(f"{data}: Ultralytics' classifier needs cls train and val folders in one root folder")
        return str(root)
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"data-{task}.yaml"
    YAML.save(file, {k: section[k] for k in ("path", "train", "val", "names", "masks_dir") if k in section})
    return str(file)


def finished_run(last: Path) -> bool:
    """Whether an Ultralytics run's last.pt is that of a finished training (Ultralytics strips it: epoch -1)."""
    return last.is_file() and read_checkpoint(last).get("epoch") == -1


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


def run_verdict(state: dict, limit: float) -> str:
    """The report's PASS/FAIL, naming the stages that kept no weights."""
    unlearned = unlearned_stages(state)
    return verdict(state, limit) + (f" (stage {', '.join(unlearned)} kept no weights)" if unlearned else "")


def budget_text(seq: dict, imgsz: int, force: dict) -> str:
    """Epochs and image size of each stage of a protocol, as trained (after any quick-mode override)."""
    stages = [{"imgsz": imgsz, **stage, **force} for stage in seq["stages"]]
    return ", ".join(f"{s['task']} {s['epochs']} epochs at {s['imgsz']} px" for s in stages)


def score_text(entry: dict | None, digits: int = 4) -> str:
    """``value [lo, hi]`` of a bootstrapped score."""
    if not entry:
        return ""
    lo, hi = entry["ci95"]
    return f"{entry['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A summary section: ``## title`` over a Markdown table of `columns` and `rows` (cells as text)."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def train_or_resume(root: Path, cfg: dict[str, Any]) -> tuple[Path, float | None]:
    """Train (or resume, or skip when finished) the unified run `cfg` in `root` (joint, or one task with ``task=``).

    Returns its best (else last) weights and the peak resident memory (MB) of the training call that finished it,
    kept in ``<root>/peak_memory.json`` so that a later invocation which skips the run still reports it.
    """
    last, memory = root / "weights" / "last.pt", root / "peak_memory.json"
    if not finished_run(last):
        start = reset_peak_rss()
        if last.is_file():
            train(task=cfg.get("task"), resume=str(last), data=cfg["data"])
        else:
            train(**cfg, project=str(root.parent), name=root.name, exist_ok=True)
        memory.write_text(json.dumps({"peak_rss_mb": rss_mb("VmHWM") if start is not None else None}))
    best = root / "weights" / "best.pt"
    peak = json.loads(memory.read_text())["peak_rss_mb"] if memory.is_file() else None
    return (best if best.is_file() else last), peak


def trained_record(root: Path, cfg: dict[str, Any], weights: Path, peak: float | None) -> dict[str, Any]:
    """What every trained run's record holds: its data, weights, training minutes, seconds per epoch, peak memory."""
    minutes = training_minutes(root)
    return {
        "data": repo_relative(cfg["data"]),
        "weights": repo_relative(weights),
        "minutes": minutes,
        "seconds_per_epoch": 60 * minutes / cfg["epochs"],
        "peak_rss_mb": peak,
    }


@dataclass
class Run:
    """One planned run of a benchmark, in ``<out>/<name>``.

    `train` trains it (resumes it, or skips it when finished) and returns what `score` needs; `score` returns its
    record (the fixed `record` entries and `scored_as` are added). `scored_as`: the entries a finished run's record
    must have for it to be kept rather than scored again; `here`: whether the folder holds the run's weights (a
    committed folder holds reports only).
    """

    name: str
    train: Callable[[Path], Any]
    score: Callable[[Path, Any], dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)
    scored_as: dict[str, Any] = field(default_factory=dict)
    here: Callable[[Path], bool] = lambda root: (root / "weights" / "last.pt").is_file()
    finished: Callable[[Path], bool] = lambda root: finished_run(root / "weights" / "last.pt")


def execute(
    runs: Iterable[Run], out: Path, recorded: dict[str, dict], save: Callable[[str, dict], None], module: str
) -> None:
    """The run planner every benchmark uses: each run in order is kept as `recorded` (by an earlier invocation into
    `out`) when its weights are not here, or when it is finished and was scored alike; else trained (resumed, or
    skipped when finished) and scored. `save` gets each record as it is made: a killed invocation leaves what is done,
    and a re-run with the same command continues."""
    for run in runs:
        root, kept = out / run.name, recorded.get(run.name)
        alike = kept is not None and all(kept.get(k) == v for k, v in run.scored_as.items())
        if kept is not None and (not run.here(root) or (alike and run.finished(root))):
            save(run.name, kept)
        else:
            LOGGER.info(f"\n{colorstr('bold', module)}: {run.name}")
            save(run.name, {**run.record, **run.score(root, run.train(root)), **run.scored_as})


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


def invocation(t0: float, commit: str) -> dict[str, Any]:
    """This invocation of a benchmark command: date, commit, wall time since `t0` and peak memory of the process."""
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    date, wall = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), (time.time() - t0) / 60
    return {"date": date, "commit": commit, "wall_minutes": wall, "peak_rss_mb": peak_rss_mb}


@dataclass(frozen=True)
class Benchmark:
    """A benchmark command: its module, keys (``out`` besides), default output folder, summary title (formatted
    with results.json's keys), `run` (fills and saves the `Report`; its runs go through `execute`) and the summary's
    `tables` after the header."""

    module: str
    keys: set[str]
    out: str
    title: str
    run: Callable[[Report], None]
    tables: Callable[[dict[str, Any]], list[list[str]]]

    def summary(self, results: dict[str, Any]) -> str:
        """summary.md of `results`: the title, the command, date, commit, machine and each invocation, the tables."""
        m, invocations = results["machine"], []
        for i in results.get("invocations", []):
            peak = f"{i['peak_rss_mb']:.0f} MB" if i["peak_rss_mb"] else "peak not recorded"
            invocations.append(f"{i['date']}, commit {i['commit']}: {i['wall_minutes']:.1f} min, {peak}")
        header = [
            f"# {self.title.format(**results)}",
            "",
            f"- command: `{results['command']}`",
            f"- date: {results['date']}, commit {results['commit']}",
            f"- machine: {m['cpu']}, {m['logical_cores']} logical cores, no GPU; torch {m['torch']}, "
            f"ultralytics {m['ultralytics']}, Python {m['python']}",
            "- each invocation (a re-run skips finished work): wall time, peak memory: " + "; ".join(invocations),
        ]
        return "\n\n".join("\n".join(block) for block in [header, *self.tables(results)] if block) + "\n"


@dataclass
class Report:
    """One invocation of a benchmark: its key=value settings, output folder, results.json so far (`results`, the
    header keys first) and the one an earlier invocation into the folder left (`previous`)."""

    bench: Benchmark
    args: dict[str, Any]
    out: Path
    results: dict[str, Any]
    previous: dict[str, Any]

    @property
    def quick(self) -> bool:
        """Whether this is a quick run (``quick=True``: every run shrunk to `QUICK`)."""
        return bool(self.args.get("quick", False))

    def save(self) -> None:
        """Write results.json, summary.md and the folder's ``.gitignore``: called as records are made, so that a killed
        invocation leaves what is done."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / ".gitignore").write_text(GITIGNORE)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "summary.md").write_text(self.bench.summary(self.results))
        LOGGER.info(f"{colorstr('bold', self.bench.module)}: {self.out / 'summary.md'}")

    def keep(self, name: str, record: dict[str, Any]) -> None:
        """`execute`'s `save` for benchmarks whose summary renders from any part of their runs: add and save."""
        self.results["runs"][name] = record
        self.save()


def run_benchmark(bench: Benchmark, argv: list[str]) -> dict[str, Any]:
    """Run `bench` for command-line tokens `argv` (``key=value``): check them, start results.json with the header
    keys (command, date, commit, machine, quick mode, invocations), run, record this invocation and save."""
    args = parse_args(argv)
    if unknown := set(args) - bench.keys - {"out"}:
        raise SyntaxError(f"unknown key(s) {sorted(unknown)} for {bench.module}; valid: {sorted(bench.keys)}")
    started, commit = time.time(), git_commit()
    out = Path(args.get("out", REPO / bench.out)).resolve()
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    tokens = (f"{key}={repo_relative(value)}" for key, _, value in (token.partition("=") for token in argv))
    results = {
        "command": f"python -m {bench.module} " + " ".join(tokens),
        "date": invocation(started, commit)["date"],
        "commit": commit,
        "machine": machine_info(),
        "quick": bool(args.get("quick", False)),
        "invocations": previous.get("invocations", []),
    }
    report = Report(bench, args, out, results, previous)
    bench.run(report)
    results["invocations"] = [*previous.get("invocations", []), invocation(started, commit)]
    report.save()
    return results


@dataclass
class ProtocolSetup:
    """What the runs of a protocol benchmark (benchmarks.hw2, benchmarks.sweep) share: the regime's protocol file
    (as `yolo-unified train` picks it) and contents, the keys every run gets (data, imgsz, pretrained), the keys that
    win over every stage's (`QUICK` in quick mode) and the protocol's relative forgetting limit."""

    report: Report
    protocol: Path
    seq: dict[str, Any]
    settings: dict[str, Any]
    force: dict[str, Any]
    limit: float

    @classmethod
    def start(cls, report: Report) -> ProtocolSetup:
        """Pick the regime's protocol, prepare the data (a raw HW2 folder is converted into datasets/hw2 first, as
        ``yolo-unified data prepare`` does) and add regime, protocol and limit to results.json."""
        args = report.args
        protocol = recommended_protocol(args.get("pretrained"))
        seq, data = YAML.load(protocol), str(args.get("data", "../shared/data/hw2"))
        if not data.endswith((".yaml", ".yml")):
            prepare_hw2(data, REPO / "datasets/hw2")
            data = str(REPO / "datasets/hw2.yaml")
        settings = {"data": data, "imgsz": int(args.get("imgsz", seq.get("imgsz", 320)))}
        settings |= {"pretrained": str(args["pretrained"])} if args.get("pretrained") else {}
        limit = float(seq.get("forget_limit", 0.05))
        regime = f"pretrained={settings['pretrained']}" if "pretrained" in settings else "from scratch"
        report.results.update(regime=regime, protocol=f"cfg/{protocol.name}", forget_limit=limit)
        return cls(report, protocol, seq, settings, dict(QUICK) if report.quick else {}, limit)


def protocol_run(
    setup: ProtocolSetup,
    name: str,
    cfg: dict[str, Any],
    score: Callable[[Path, dict], dict[str, Any]],
    record: dict[str, Any],
    first_stage: Callable[[], dict] | None = None,
) -> Run:
    """The `Run` of the protocol `cfg` in ``<out>/<name>``: trained by ``yolo-unified train`` with the setup's run
    settings (its finished stages skipped, an interrupted one resumed), from the first stage of the finished protocol
    state `first_stage` returns when given (every run of a benchmark trains the same stage 1: trained once, shared);
    `score` gets the state (stage paths absolute). The record adds the run's folder, this call's wall time and the
    stages with repository-relative paths. A run whose weights are here is scored again, finished or not."""

    def trained(root: Path) -> tuple[dict, float]:
        if first_stage is not None and not (root / STATE_FILE).is_file():  # a kill never leaves half a file
            root.mkdir(parents=True, exist_ok=True)
            save_atomically({"stages": first_stage()["stages"][:1]}, root / STATE_FILE)
        t0, keys = time.time(), {**cfg, **setup.settings}
        state = train(**keys, project=str(root.parent), name=root.name, exist_ok=True, force=setup.force)
        return {**state, "stages": with_stage_paths(state["stages"], repo_path)}, time.time() - t0

    def scored(root: Path, state_seconds: tuple[dict, float]) -> dict[str, Any]:
        state, seconds = state_seconds
        record = {"root": repo_relative(root), "wall_minutes_this_call": seconds / 60}
        return {**score(root, state), **record, "stages": with_stage_paths(state["stages"], repo_relative)}

    def here(root: Path) -> bool:
        stages = read_state(root)["stages"] if (root / STATE_FILE).is_file() else []
        return bool(stages) and all(repo_path(s["weights"]).is_file() for s in stages)

    return Run(name, trained, scored, record, here=here, finished=lambda _: False)
