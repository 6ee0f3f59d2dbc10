"""The forgetting report of a protocol run: tables (CSV, Markdown, console) and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from ultralytics.utils import LOGGER, colorstr, plt_settings

from yolo_unified.common import TASK_TABLE

COLUMNS = {  # report column -> (task, Ultralytics metric name)
    column: (task, metric) for task, info in TASK_TABLE.items() for column, metric in info.report_columns
}
PRIMARY = {task: info.report_columns[0][0] for task, info in TASK_TABLE.items()}  # the column of each task's score


def stage_tasks(stage: dict[str, Any]) -> list[str]:
    """The tasks a stage (of a protocol's config or its record) learns: ``tasks`` of a joint stage, else ``task``."""
    return list(stage.get("tasks") or [stage["task"]])


def own_scores(record: dict[str, Any]) -> dict[str, float]:
    """The primary score of each task a finished stage learned, right after that stage."""
    return record.get("own_scores") or {record["task"]: record["own_score"]}


def forgetting(state: dict[str, Any], limit: float) -> dict[str, dict[str, Any]]:
    """Per task: score right after its own stage, final score, relative and absolute drop, PASS/FAIL."""
    stages = state["stages"]
    final = stages[-1]["scores"]
    out = {}
    for s in stages:
        for t, own in own_scores(s).items():
            if t not in final:
                continue
            last = final[t][COLUMNS[PRIMARY[t]][1]]
            rel = (own - last) / own if own > 0 else 0.0
            out[t] = {"own": own, "final": last, "relative": rel, "points": 100 * (own - last), "pass": rel <= limit}
    return out


def unlearned_stages(state: dict[str, Any]) -> list[str]:
    """The stages (``"2 (det)"``) that kept no weights: every epoch of theirs forgot too much."""
    return [f"{i + 1} ({s['task']})" for i, s in enumerate(state["stages"]) if s.get("kept_weights") is False]


def verdict(state: dict[str, Any], limit: float) -> str:
    """PASS when every task stays within `limit` and every stage kept weights, else FAIL."""
    passed = all(d["pass"] for d in forgetting(state, limit).values()) and not unlearned_stages(state)
    return "PASS" if passed else "FAIL"


def table_rows(state: dict[str, Any], limit: float, baselines: dict | None = None) -> list[list[str]]:
    """The report table: a header, one row per stage, the forgetting row, and the retention row with baselines."""
    rows = [["after stage", *COLUMNS]]
    for i, s in enumerate(state["stages"]):
        row = [f"{i + 1} ({s['task']})"]
        for task, metric in COLUMNS.values():
            value = s["scores"].get(task, {}).get(metric)
            row.append("" if value is None else f"{value:.4f}")
        rows.append(row)
    drops = forgetting(state, limit)
    cells = {
        PRIMARY[t]: f"{d['relative']:+.2%} ({d['points']:+.2f} pts) {'PASS' if d['pass'] else 'FAIL'}"
        for t, d in drops.items()
    }
    rows.append(["forgetting", *(cells.get(c, "") for c in COLUMNS)])
    if baselines:
        own = {t: v for s in baselines["stages"] for t, v in own_scores(s).items()}
        cells = {PRIMARY[t]: f"{d['final'] / own[t]:.2%}" for t, d in drops.items() if own.get(t)}
        rows.append(["retention vs single-task", *(cells.get(c, "") for c in COLUMNS)])
    return rows


def shown(path: str | Path) -> str:
    """`path` as a command line would give it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def run_summary(
    root: Path, state: dict[str, Any], limit: float, images: str | None = None, compare: str | None = None
) -> str:
    """The lines a protocol run ends with: each task's final score and forgetting, the verdict, where the report and
    the weights are, the comparison command (`compare`) and the commands to try next (predict on `images`)."""
    weights = shown(root / "weights" / "best.pt")
    head = f"{colorstr('bold', 'Summary')}: {verdict(state, limit)}"
    lines = [f"{head} (a task may lose at most {limit:.0%} of its score)"]
    for t, d in forgetting(state, limit).items():
        result = "PASS" if d["pass"] else "FAIL"
        lines.append(f"  {t}  {PRIMARY[t]:<6} {d['final']:.3f}  forgetting {d['relative']:+6.1%}  {result}")
    lines += [f"  report   {shown(root / 'forgetting.md')} (plots beside it)", f"  weights  {weights}"]
    if compare:
        lines.append(f"  compare  {compare}  (the same stages without mitigation)")
    source = shown(images) if images else "path/to/images"
    lines += ["Next:", f"  yolo-unified predict model={weights} source={source}"]
    lines.append(f"  yolo-unified export model={weights} format=onnx  (needs the [export] extra)")
    return "\n".join(lines)


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def write_report(root: Path, state: dict[str, Any], forget_limit: float = 0.05, baselines: str | None = None) -> str:
    """Write forgetting.csv, forgetting.md and the plots into `root`, print the table; return the Markdown."""
    base = json.loads((Path(baselines) / "protocol.json").read_text()) if baselines else None
    rows = table_rows(state, forget_limit, base)
    with open(root / "forgetting.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    unlearned = unlearned_stages(state)
    warning = (
        f"\n\nStage(s) {', '.join(unlearned)} kept no weights (every epoch forgot too much): the protocol went on "
        "from the previous weights, so that task was not learned and its forgetting says nothing."
        if unlearned
        else ""
    )
    overall = verdict(state, forget_limit)
    md = (
        f"# Forgetting report\n\nLimit: relative drop <= {forget_limit:.0%} of each task's score right after its own "
        f"stage (mIoU for seg, mAP50 for det, top-1 for cls). Overall: **{overall}**.{warning}\n\n{markdown(rows)}"
    )
    (root / "forgetting.md").write_text(md)
    plot_report(root, state)
    LOGGER.info(f"\n{colorstr('bold', 'Forgetting report')} ({root / 'forgetting.md'})\n{markdown(rows)}")
    return md


@plt_settings()
def plot_report(root: Path, state: dict[str, Any]) -> None:
    """Task scores across stages (lines), relative change per task and stage (heatmap), training curves per stage."""
    stages = state["stages"]
    tasks = list(dict.fromkeys(t for s in stages for t in stage_tasks(s)))
    labels = [f"{i + 1}\n{s['task']}" for i, s in enumerate(stages)]
    score = [[s["scores"].get(t, {}).get(COLUMNS[PRIMARY[t]][1], np.nan) for s in stages] for t in tasks]

    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    for t, ys in zip(tasks, score, strict=True):
        ax.plot(range(len(stages)), ys, marker="o", label=f"{t} ({PRIMARY[t]})")
    ax.set(xticks=range(len(stages)), xticklabels=labels, ylabel="score", title="Task scores after each stage")
    ax.legend()
    fig.savefig(root / "metrics_across_stages.png", dpi=150)
    plt.close(fig)

    own = {t: v for s in stages for t, v in own_scores(s).items()}
    change = np.array(
        [[(v - own[t]) / own[t] if own[t] else np.nan for v in ys] for t, ys in zip(tasks, score, strict=True)]
    )
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(stages), 1 + 0.8 * len(tasks)), tight_layout=True)
    im = ax.imshow(change * 100, cmap="RdYlGn", vmin=-20, vmax=20)
    for (r, c), v in np.ndenumerate(change):
        if np.isfinite(v):
            ax.text(c, r, f"{v:+.1%}", ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(stages)), xticklabels=labels, yticks=range(len(tasks)), yticklabels=tasks)
    ax.set_title("Change vs score after own stage (%)")
    fig.colorbar(im, ax=ax)
    fig.savefig(root / "forgetting_heatmap.png", dpi=150)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), tight_layout=True, squeeze=False)
    for ax, s, label in zip(axes[0], stages, labels, strict=True):
        results = Path(s["save_dir"]) / "results.csv"
        if not results.is_file():
            continue
        with open(results) as f:
            rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        for key in (k for k in rows[0] if k.startswith("train/")):
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], label=key.removeprefix("train/"))
        ax.set(title=f"stage {label.replace(chr(10), ' ')}", xlabel="epoch")
        ax.legend(fontsize=7)
    fig.savefig(root / "training_curves.png", dpi=150)
    plt.close(fig)
