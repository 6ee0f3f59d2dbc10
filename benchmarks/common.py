"""What the benchmarks share: the run planner (`Run`, `execute`), paths, quick mode, protocol runs, provenance and
output files. With benchmarks.bootstrap the bottom of benchmarks/: it imports no other benchmark module."""

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
# Written by benchmarks.common.write_gitignore: a benchmark's folder commits its evidence, not its working files.
# Kept: summary.md, results.json, the plots at the top (joint_scores.png, pareto_stage*.png), the speed tables
# (speed/benchmark.md) and each protocol run's report and record (<run>/forgetting.md, <run>/protocol.json: the summary
# quotes the default runs' reports, a re-run with recorded=True scores new runs against baselines/protocol.json and a
# sweep reads its base's default_seed0/protocol.json), and a run's scores.json.
# Not kept: weights, exported models (*_openvino_model/, *.onnx), each run's stage, bootstrap/, deployed/ and eval/
# folders, args.yaml, per-epoch results.csv and Ultralytics' plots: results.json holds every number.
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


def benchmark_args(argv: list[str], keys: set[str], module: str) -> dict[str, Any]:
    """The ``key=value`` tokens `argv` of the command `module` as a dict, refusing keys other than `keys`."""
    args = parse_args(argv)
    if unknown := set(args) - keys:
        raise SyntaxError(f"unknown key(s) {sorted(unknown)} for {module}; valid: {sorted(keys)}")
    return args


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


def run_settings(args: dict, seq: dict) -> dict[str, Any]:
    """The keys every run of a benchmark gets: ``data`` (a raw HW2 folder is converted into datasets/hw2 first, as
    ``yolo-unified data prepare`` does), ``imgsz`` (default: the protocol's) and ``pretrained`` when given."""
    data = str(args.get("data", "../shared/data/hw2"))
    if not data.endswith((".yaml", ".yml")):
        prepare_hw2(data, REPO / "datasets/hw2")
        data = str(REPO / "datasets/hw2.yaml")
    settings = {"data": data, "imgsz": int(args.get("imgsz", seq.get("imgsz", 320)))}
    if args.get("pretrained"):
        settings["pretrained"] = str(args["pretrained"])
    return settings


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
    keys = ("path", "train", "val", "names", "masks_dir")
    file = out / f"data-{task}.yaml"
    YAML.save(file, {k: section[k] for k in keys if k in section})
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
    if unlearned := unlearned_stages(state):
        return f"{verdict(state, limit)} (stage {', '.join(unlearned)} kept no weights)"
    return verdict(state, limit)


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


def markdown(blocks: Iterable[list[str]]) -> str:
    """Markdown of blocks of lines (a heading with its table, a paragraph...), a blank line between two; empty blocks
    are left out."""
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def write_gitignore(out: Path) -> None:
    """Write `GITIGNORE` into `out` as ``.gitignore``: git then offers only a benchmark's evidence for a commit."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text(GITIGNORE)


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


def weights_here(root: Path) -> bool:
    """Whether a run folder holds its weights (a committed folder holds reports only)."""
    return (root / "weights" / "last.pt").is_file()


@dataclass
class Run:
    """One planned run of a benchmark, in ``<out>/<name>``.

    `train` trains it (resumes it, or skips it when finished) and returns what `score` needs; `score` returns its
    record (the fixed `record` entries and `scored_as` are added). `scored_as`: the entries a finished run's record
    must have for it to be kept rather than scored again; `here`: whether the folder holds the run's weights.
    """

    name: str
    train: Callable[[Path], Any]
    score: Callable[[Path, Any], dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)
    scored_as: dict[str, Any] = field(default_factory=dict)
    here: Callable[[Path], bool] = weights_here
    finished: Callable[[Path], bool] = lambda root: finished_run(root / "weights" / "last.pt")


def execute(
    runs: Iterable[Run], out: Path, recorded: dict[str, dict], save: Callable[[str, dict], None], module: str
) -> dict[str, dict]:
    """The run planner every benchmark uses: each run in order is kept as `recorded` (by an earlier invocation into
    `out`) when its weights are not here, or when it is finished and was scored alike; else trained (resumed, or
    skipped when finished) and scored. `save` gets each record as it is made: a killed invocation leaves what is done,
    and a re-run with the same command continues."""
    records = {}
    for run in runs:
        root, kept = out / run.name, recorded.get(run.name)
        alike = kept is not None and all(kept.get(k) == v for k, v in run.scored_as.items())
        if kept is not None and (not run.here(root) or (alike and run.finished(root))):
            record = kept
        else:
            LOGGER.info(f"\n{colorstr('bold', module)}: {run.name}")
            record = {**run.record, **run.score(root, run.train(root)), **run.scored_as}
        records[run.name] = record
        save(run.name, record)
    return records


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


def invocation_text(i: dict[str, Any]) -> str:
    """One `invocation` as the summaries list it."""
    peak = f"{i['peak_rss_mb']:.0f} MB" if i["peak_rss_mb"] else "peak not recorded"
    return f"{i['date']}, commit {i['commit']}: {i['wall_minutes']:.1f} min, {peak}"


def header_lines(title: str, results: dict[str, Any]) -> list[str]:
    """The top of every summary: `title`, then the command, date, commit, machine and each invocation of
    `results` (what `run_benchmark` writes first into results.json)."""
    m = results["machine"]
    return [
        f"# {title}",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}, commit {results['commit']}",
        f"- machine: {m['cpu']}, {m['logical_cores']} logical cores, no GPU; torch {m['torch']}, "
        f"ultralytics {m['ultralytics']}, Python {m['python']}",
        "- each invocation (a re-run skips finished work): wall time, peak memory: "
        + "; ".join(invocation_text(i) for i in results.get("invocations", [])),
    ]


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
        bench, out = self.bench, self.out
        write_gitignore(out)
        (out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (out / "summary.md").write_text(bench.summary(self.results))
        LOGGER.info(f"{colorstr('bold', bench.module)}: {out / 'summary.md'}")

    def keep(self, name: str, record: dict[str, Any]) -> None:
        """`execute`'s `save` for benchmarks whose summary renders from any part of their runs: add and save."""
        self.results["runs"][name] = record
        self.save()


@dataclass(frozen=True)
class Benchmark:
    """A benchmark command: its module, keys, default output folder, summary title (formatted with results.json's
    keys), `run` (fills and saves the `Report`; its runs go through `execute`) and the summary's `tables` after the
    header."""

    module: str
    keys: set[str]
    out: str
    title: str
    run: Callable[[Report], None]
    tables: Callable[[dict[str, Any]], list[list[str]]]

    def summary(self, results: dict[str, Any]) -> str:
        """summary.md of `results`: the title and `header_lines`, then the benchmark's tables."""
        return markdown([header_lines(self.title.format(**results), results), *self.tables(results)])


def run_benchmark(bench: Benchmark, argv: list[str]) -> dict[str, Any]:
    """Run `bench` for command-line tokens `argv` (``key=value``): check them, start results.json with the header
    keys (command, date, commit, machine, quick mode, invocations), run, record this invocation and save."""
    args = benchmark_args(argv, bench.keys | {"out"}, bench.module)
    started, commit = time.time(), git_commit()
    out = Path(args.get("out", REPO / bench.out)).resolve()
    previous = previous_results(out)
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


def previous_results(out: Path) -> dict[str, Any]:
    """The ``results.json`` an earlier invocation of a benchmark wrote into `out` (empty when there is none)."""
    file = out / "results.json"
    return json.loads(file.read_text()) if file.is_file() else {}


@dataclass
class ProtocolSetup:
    """What the runs of a protocol benchmark (benchmarks.hw2, benchmarks.sweep) share: the regime's protocol file
    (as `yolo-unified train` picks it) and contents, the run settings (`run_settings`), the keys that win over every
    stage's (`QUICK` in quick mode) and the protocol's relative forgetting limit."""

    report: Report
    protocol: Path
    seq: dict[str, Any]
    settings: dict[str, Any]
    force: dict[str, Any]
    limit: float

    @classmethod
    def start(cls, report: Report) -> ProtocolSetup:
        """Pick the regime's protocol, prepare the data and add regime, protocol and limit to results.json."""
        protocol = recommended_protocol(report.args.get("pretrained"))
        seq = YAML.load(protocol)
        settings = run_settings(report.args, seq)
        limit = float(seq.get("forget_limit", 0.05))
        regime = f"pretrained={settings['pretrained']}" if "pretrained" in settings else "from scratch"
        report.results.update(regime=regime, protocol=f"cfg/{protocol.name}", forget_limit=limit)
        return cls(report, protocol, seq, settings, dict(QUICK) if report.quick else {}, limit)


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


def protocol_here(root: Path) -> bool:
    """Whether the protocol run in `root` holds every stage's weights (a committed run holds its protocol.json)."""
    return (root / STATE_FILE).is_file() and all(repo_path(s["weights"]).is_file() for s in read_state(root)["stages"])


def protocol_run(
    setup: ProtocolSetup,
    name: str,
    cfg: dict[str, Any],
    score: Callable[[Path, dict], dict[str, Any]],
    record: dict[str, Any],
    first_stage: Callable[[], dict] | None = None,
) -> Run:
    """The `Run` of the protocol `cfg` in ``<out>/<name>``: trained by ``yolo-unified train`` with the setup's run
    settings (its finished stages skipped, an interrupted one resumed), from the first stage of the protocol state
    `first_stage` returns when given; `score` gets the state (stage paths absolute). The record adds the run's folder,
    this call's wall time and the stage records with repository-relative paths. Finished or not, a run whose weights
    are here is scored again."""

    def trained(root: Path) -> tuple[dict, float]:
        if first_stage is not None:
            share_first_stage(root, first_stage())
        t0 = time.time()
        state = train(**{**cfg, **setup.settings}, project=str(root.parent), name=root.name, exist_ok=True,
                      force=setup.force)  # fmt: skip
        return {**state, "stages": with_stage_paths(state["stages"], repo_path)}, time.time() - t0

    def scored(root: Path, state_seconds: tuple[dict, float]) -> dict[str, Any]:
        state, seconds = state_seconds
        return {
            **score(root, state),
            "root": repo_relative(root),
            "wall_minutes_this_call": seconds / 60,
            "stages": with_stage_paths(state["stages"], repo_relative),
        }

    return Run(name, trained, scored, record, here=protocol_here, finished=lambda _: False)
