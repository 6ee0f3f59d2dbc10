"""The forgetting report of a protocol run: tables (CSV, Markdown, console), the summary lines and plots of the numbers
of `yolo_unified.workflows.scores`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from ultralytics.utils import LOGGER, colorstr, plt_settings

from yolo_unified.common import PRIMARY_METRIC, STATE_FILE, TASK_TABLE
from yolo_unified.files import read_json
from yolo_unified.workflows.scores import (
    accuracy_matrix,
    class_groups,
    forgetting,
    own_scores,
    protocol_transfer,
    stage_label,
    stage_tasks,
    unlearned_stages,
    verdict,
)

COLUMNS = {  # report column -> (task, Ultralytics metric name)
    column: (task, metric) for task, info in TASK_TABLE.items() for column, metric in info.report_columns
}
PRIMARY = {task: info.report_columns[0][0] for task, info in TASK_TABLE.items()}  # the column of each task's score


def drop_cell(d: dict[str, Any]) -> str:
    """A drop of `drop` as a table cell: ``+12.50% (+10.00 pts) FAIL``."""
    return f"{d['relative']:+.2%} ({d['points']:+.2f} pts) {'PASS' if d['pass'] else 'FAIL'}"


def cell(value: float) -> str:
    """A score as a table cell: 4 decimals, blank for NaN."""
    return f"{value:.4f}" if np.isfinite(value) else ""


def matrix_rows(state: dict[str, Any]) -> list[list[str]]:
    """The accuracy matrix as a table: the units as columns, a row ``after stage i (task)`` per stage."""
    names, R = accuracy_matrix(state)
    labels = [f"after stage {stage_label(i, s)}" for i, s in enumerate(state["stages"])]
    return [["", *names]] + [[label, *map(cell, row)] for label, row in zip(labels, R, strict=True)]


def transfer_line(result: dict[str, Any], baselines: bool) -> str:
    """BWT and FWT of `protocol_transfer` for the report (why a value is missing when it is)."""
    bwt = "n/a (one stage)" if result["BWT"] is None else f"{result['BWT']:+.4f}"
    if result["FWT"] is not None:
        fwt = f"{result['FWT']:+.4f}"
    else:
        fwt = (
            "n/a (no unit learned after stage 1 scored here and alone)"
            if baselines
            else "needs a baselines run (baselines=)"
        )
    return f"BWT: {bwt}; FWT: {fwt}"


def class_group_rows(state: dict[str, Any], limit: float) -> list[list[str]]:
    """`class_groups` as a table."""
    rows = [["after stage", "unit", "old", "new", "all", "old after the previous stage", "old classes' forgetting"]]
    for g in class_groups(state, limit):
        values = (cell(g[k]) for k in ("old", "new", "all", "old_before"))
        forgot = "" if g["pass"] is None else drop_cell(g)
        rows.append([stage_label(g["stage"], state["stages"][g["stage"]]), g["unit"], *values, forgot])
    return rows


def table_rows(state: dict[str, Any], limit: float, baselines: dict | None = None) -> list[list[str]]:
    """The report table: a header, one row per stage, the forgetting row, and the retention row with baselines."""
    rows = [["after stage", *COLUMNS]]
    for i, s in enumerate(state["stages"]):
        row = [stage_label(i, s)]
        for task, metric in COLUMNS.values():
            value = s["scores"].get(task, {}).get(metric)
            row.append("" if value is None else f"{value:.4f}")
        rows.append(row)
    drops = forgetting(state, limit)
    cells = {PRIMARY[t]: drop_cell(d) for t, d in drops.items()}
    rows.append(["forgetting", *(cells.get(c, "") for c in COLUMNS)])
    if baselines:
        own = {t: v for s in baselines["stages"] for t, v in own_scores(s).items()}
        cells = {PRIMARY[t]: f"{d['final'] / own[t]:.2%}" for t, d in drops.items() if own.get(t)}
        rows.append(["retention vs single-task", *(cells.get(c, "") for c in COLUMNS)])
    return rows


def load_baselines(baselines: str | Path | None) -> dict[str, Any] | None:
    """The state (protocol.json) of the baselines run in folder `baselines`; None without one."""
    return read_json(Path(baselines) / STATE_FILE) if baselines else None


def shown(path: str | Path) -> str:
    """`path` as a command line would give it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def summary_head(passed: bool, limit: float) -> str:
    """The first line of a run's summary: its verdict and the forgetting limit it was judged by."""
    verdict_word = "PASS" if passed else "FAIL"
    return f"{colorstr('bold', 'Summary')}: {verdict_word} (a task may lose at most {limit:.0%} of its score)"


def run_summary(
    root: Path,
    state: dict[str, Any],
    limit: float,
    images: str | None = None,
    compare: str | None = None,
    memory: str | None = None,
    known: tuple[list[str], bool] | None = None,
) -> str:
    """The lines a protocol run ends with: each task's final score and forgetting, the verdict, BWT (and FWT with the
    run's ``baselines``), what the model's memory keeps (`memory`, in words), where the report and the weights are,
    the comparison command (`compare`) and the commands to try next (predict on `images`). `known`: the lines of the
    tasks the start model knew beyond the protocol's and whether they held (PASS needs them too)."""
    weights = shown(root / "weights" / "best.pt")
    passed = verdict(state, limit) == "PASS" and (known is None or known[1])
    lines = [summary_head(passed, limit)]
    for t, d in forgetting(state, limit).items():
        result = "PASS" if d["pass"] else "FAIL"
        lines.append(f"  {t}  {PRIMARY[t]:<6} {d['final']:.3f}  forgetting {d['relative']:+6.1%}  {result}")
    lines += known[0] if known else []
    for g in class_groups(state, limit):
        if g["pass"] is not None:
            result = "PASS" if g["pass"] else "FAIL"
            lines.append(
                f"  {g['task']}  stage {g['stage'] + 1}'s old classes {g['old']:.3f}  "
                f"forgetting {g['relative']:+6.1%}  {result}  (new {g['new']:.3f})"
            )
    baselines = load_baselines((state.get("config") or {}).get("baselines"))
    transfer = protocol_transfer(state, baselines).items()
    if found := [f"{k} {round(v, 3) + 0.0:+.3f}" for k, v in transfer if v is not None]:  # +0.000, not -0.000
        lines.append(f"  transfer  {'  '.join(found)}  (accuracy matrix in the report)")
    if memory:
        lines.append(f"  memory   {memory}")
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


def write_csv(path: Path, rows: list[list[str]]) -> None:
    """Write a table as CSV."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def transfer_section(state: dict[str, Any], forget_limit: float, baselines: dict[str, Any] | None) -> str:
    """The report's Markdown on the accuracy matrix, BWT and FWT and, with stages adding classes, the class groups."""
    md = (
        "\n## Accuracy matrix\n\nR[i, j]: the score of unit j after stage i (blank before j is learned). A unit is a "
        "task learned in one stage (its primary metric) or, for a task learned over several stages, the classes one "
        "of them added (`det 1`, `det 2`: their mean per-class score). BWT = mean over units j learned before the "
        "last stage T of (R[T, j] - R[s_j, j]), s_j the stage that learned j (negative: forgetting). FWT = mean over "
        "units j learned after stage 1 of (R[s_j, j] - b_j), b_j the score of j trained alone (the baselines run; "
        f"negative: the earlier stages hinder it).\n\n{markdown(matrix_rows(state))}\n"
        f"{transfer_line(protocol_transfer(state, baselines), baselines is not None)}\n"
    )
    groups = class_group_rows(state, forget_limit)
    if len(groups) > 1:
        md += (
            "\n## Class groups\n\nStages that add classes to a task learned before: the mean per-class score after "
            "the stage of the task's old classes, the new ones and all of them; the old classes' forgetting is their "
            f"relative drop from the previous stage (limit {forget_limit:.0%}).\n\n{markdown(groups)}"
        )
    return md


def write_report(root: Path, state: dict[str, Any], forget_limit: float = 0.05, baselines: str | None = None) -> str:
    """Write forgetting.csv, forgetting.md, accuracy_matrix.csv and the plots into `root`; return the Markdown."""
    base = load_baselines(baselines)
    rows = table_rows(state, forget_limit, base)
    write_csv(root / "forgetting.csv", rows)
    write_csv(root / "accuracy_matrix.csv", matrix_rows(state))
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
        f"stage (mIoU for seg, mAP50 for det, top-1 for cls), and of the old classes' score of a stage that adds "
        f"classes (Class groups). Overall: **{overall}**.{warning}\n\n{markdown(rows)}"
    )
    transfers = transfer_section(state, forget_limit, base)
    (root / "forgetting.md").write_text(md + transfers)
    plot_report(root, state)
    LOGGER.info(f"\n{colorstr('bold', 'Forgetting report')} ({root / 'forgetting.md'})\n{markdown(rows)}{transfers}")
    return md + transfers


def heatmap(file: Path, values: np.ndarray, labels: tuple[list, list], title: str, fmt: str, **style: Any) -> None:
    """Save `values` as a heatmap, each finite value written in its cell with `fmt` (``style``: the figure's
    ``size``, the colours' ``scale`` and imshow's keywords)."""
    fig, ax = plt.subplots(figsize=style.pop("size"), tight_layout=True)
    im = ax.imshow(values * style.pop("scale", 1), **style)
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8)
    xlabels, ylabels = labels
    ax.set(xticks=range(len(xlabels)), xticklabels=xlabels, yticks=range(len(ylabels)), yticklabels=ylabels)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.savefig(file, dpi=150)
    plt.close(fig)


@plt_settings()
def plot_report(root: Path, state: dict[str, Any]) -> None:
    """Plot task scores across stages, their relative change, the accuracy matrix and each stage's training curves."""
    stages = state["stages"]
    tasks = list(dict.fromkeys(t for s in stages for t in stage_tasks(s)))
    labels = [f"{i + 1}\n{s['task']}" for i, s in enumerate(stages)]
    score = [[s["scores"].get(t, {}).get(PRIMARY_METRIC[t], np.nan) for s in stages] for t in tasks]

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
    size = (1.5 + 1.2 * len(stages), 1 + 0.8 * len(tasks))
    title = "Change vs score after own stage (%)"
    style = {"size": size, "scale": 100, "cmap": "RdYlGn", "vmin": -20, "vmax": 20}
    heatmap(root / "forgetting_heatmap.png", change, (labels, tasks), title, "{:+.1%}", **style)
    names, R = accuracy_matrix(state)
    ylabels = [f"after {stage_label(i, s)}" for i, s in enumerate(stages)]
    title = "Accuracy matrix: score of each unit after each stage"
    style = {"size": (2.5 + 1.1 * len(names), 1 + 0.6 * len(stages)), "cmap": "YlGn", "vmin": 0, "vmax": 1}
    heatmap(root / "accuracy_matrix.png", R, (names, ylabels), title, "{:.3f}", **style)

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
