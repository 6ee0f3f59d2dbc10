"""The forgetting report of a protocol run: tables (CSV, Markdown, console) and plots, the accuracy matrix with
backward and forward transfer, and the old / new class groups of the stages that add classes to a task."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from ultralytics.utils import LOGGER, colorstr, plt_settings

from yolo_unified.common import PRIMARY_METRIC, STATE_FILE, TASK_TABLE
from yolo_unified.files import read_json

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


def stage_label(i: int, record: dict[str, Any]) -> str:
    """How the report names stage `i` (from 0): ``"2 (det)"``, ``"1 (seg+det)"``."""
    return f"{i + 1} ({record['task']})"


def drop(before: float, after: float, limit: float) -> dict[str, Any]:
    """The relative and absolute (points) drop from `before` to `after`; PASS when the relative one is <= `limit`."""
    rel = (before - after) / before if before > 0 else 0.0
    return {"relative": rel, "points": 100 * (before - after), "pass": rel <= limit}


def drop_cell(d: dict[str, Any]) -> str:
    """A drop of `drop` as a table cell: ``+12.50% (+10.00 pts) FAIL``."""
    return f"{d['relative']:+.2%} ({d['points']:+.2f} pts) {'PASS' if d['pass'] else 'FAIL'}"


def forgetting(state: dict[str, Any], limit: float) -> dict[str, dict[str, Any]]:
    """Per task: score right after its own stage, final score, relative and absolute drop, PASS/FAIL."""
    stages = state["stages"]
    final = stages[-1]["scores"]
    out = {}
    for s in stages:
        for t, own in own_scores(s).items():
            if t not in final:
                continue
            last = final[t][PRIMARY_METRIC[t]]
            out[t] = {"own": own, "final": last, **drop(own, last, limit)}
    return out


def unlearned_stages(state: dict[str, Any]) -> list[str]:
    """The stages (``"2 (det)"``) that kept no weights: every epoch of theirs forgot too much."""
    return [stage_label(i, s) for i, s in enumerate(state["stages"]) if s.get("kept_weights") is False]


@dataclass(frozen=True)
class Unit:
    """A column of the accuracy matrix: a task learned in one stage, or the classes one stage added to a task learned
    over several stages (its first stage's classes included)."""

    name: str  # "seg"; "det 1", "det 2" for the stages of a task learned over several
    task: str
    stage: int  # the stage (from 0) that learned it
    classes: tuple[str, ...] | None = None  # None: scored by the task's primary metric; else by its classes' mean


def units(state: dict[str, Any]) -> list[Unit]:
    """The units of a protocol, in the order its stages learn them. Each stage of a task learned over several gives
    the unit of the ``classes`` it brought that no earlier stage of the task had (a known class stays in its first
    group); a stage whose record has no ``classes`` of the task gives a unit scored by the task's primary metric."""
    stages = state["stages"]
    learned = [(i, t) for i, s in enumerate(stages) for t in stage_tasks(s)]
    stages_of, counted, known = Counter(t for _, t in learned), Counter(), defaultdict(set)
    out = []
    for i, t in learned:
        if stages_of[t] == 1:
            out.append(Unit(t, t, i))
            continue
        counted[t] += 1
        brought = (stages[i].get("classes") or {}).get(t)
        group = None if brought is None else tuple(dict.fromkeys(c for c in brought if c not in known[t]))
        known[t].update(group or ())
        out.append(Unit(f"{t} {counted[t]}", t, i, group))
    return out


def per_class(record: dict[str, Any], task: str) -> dict[str, float]:
    """The per-class primary scores of `task` after the stage of `record` (empty when not recorded)."""
    return record["scores"].get(task, {}).get("per_class") or {}


def class_mean(scores: dict[str, float], classes: Iterable[str]) -> float:
    """The mean of `scores` over those of `classes` it holds; NaN when it holds none."""
    values = [scores[c] for c in classes if c in scores]
    return float(np.mean(values)) if values else np.nan


def unit_score(record: dict[str, Any], unit: Unit) -> float:
    """`unit`'s score after the stage of `record`: its task's primary metric, or its classes' mean per-class score."""
    if unit.classes is None:
        return float(record["scores"].get(unit.task, {}).get(PRIMARY_METRIC[unit.task], np.nan))
    return class_mean(per_class(record, unit.task), unit.classes)


def accuracy_matrix(state: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The unit names and R, R[i, j] = the score of unit j after stage i (NaN before the stage that learns j)."""
    found = units(state)
    scores = [[unit_score(s, u) if i >= u.stage else np.nan for u in found] for i, s in enumerate(state["stages"])]
    return [u.name for u in found], np.array(scores, dtype=float).reshape(len(state["stages"]), len(found))


def own_unit_scores(state: dict[str, Any]) -> dict[str, float]:
    """Each unit's score right after the stage that learned it (of a baselines run: the unit trained alone)."""
    return {u.name: unit_score(state["stages"][u.stage], u) for u in units(state)}


def finite_mean(values: Iterable[float]) -> float | None:
    """The mean of the finite `values`; None when there is none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def transfer(R: np.ndarray, learned_at: Sequence[int], baseline: Sequence[float] | None = None) -> dict[str, Any]:
    """Backward and forward transfer of the accuracy matrix `R` (T stages x units; unit j learned at stage
    ``s_j = learned_at[j]``):

    - BWT = mean over units j with s_j < T-1 of (R[T-1, j] - R[s_j, j]), GEM's (Lopez-Paz & Ranzato, 2017) backward
      transfer as Avalanche and Mammoth compute it; negative: forgetting.
    - FWT = mean over units j with s_j > 0 of (R[s_j, j] - b_j), b_j = `baseline`[j], unit j's score when its stage is
      trained alone (a baselines run). GEM compares R[s_j - 1, j] (before learning j) with a random initialisation;
      this one compares the learned unit with the single-task model; negative: the earlier stages hinder it.

    Pairs with a NaN are left out; a value is None when no pair is left (one stage; no `baseline`)."""
    last = R.shape[0] - 1
    bwt = [R[last, j] - R[s, j] for j, s in enumerate(learned_at) if s < last]
    fwt = [] if baseline is None else [R[s, j] - baseline[j] for j, s in enumerate(learned_at) if s > 0]
    return {"BWT": finite_mean(bwt), "FWT": finite_mean(fwt)}


def protocol_transfer(state: dict[str, Any], baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """`transfer` of a protocol's state; FWT against the units of the `baselines` run's state (matched by name)."""
    names, R = accuracy_matrix(state)
    alone = own_unit_scores(baselines) if baselines else None
    baseline = None if alone is None else [alone.get(n, np.nan) for n in names]
    return transfer(R, [u.stage for u in units(state)], baseline)


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


def class_groups(state: dict[str, Any], limit: float) -> list[dict[str, Any]]:
    """Per stage that adds classes to a task learned before: the mean per-class score after it of the ``old`` classes
    (the task's before the stage), the ``new`` ones and ``all`` of `per_class`; the old classes' mean after the
    previous stage (``old_before``) and their drop from it (`drop`; ``pass`` None when a mean is missing)."""
    stages, out, known = state["stages"], [], defaultdict(list)
    for u in units(state):
        if u.classes is None:
            continue
        if u.task in known:
            after, old = per_class(stages[u.stage], u.task), known[u.task]
            row = {"stage": u.stage, "task": u.task, "unit": u.name, "old": class_mean(after, old)}
            row.update(new=class_mean(after, u.classes), all=class_mean(after, after))
            row["old_before"] = class_mean(per_class(stages[u.stage - 1], u.task), old)
            if np.isfinite([row["old_before"], row["old"]]).all():
                row.update(drop(row["old_before"], row["old"], limit))
            else:
                row.update({"relative": np.nan, "points": np.nan, "pass": None})
            out.append(row)
        known[u.task] += u.classes
    return out


def class_group_rows(state: dict[str, Any], limit: float) -> list[list[str]]:
    """`class_groups` as a table."""
    rows = [["after stage", "unit", "old", "new", "all", "old after the previous stage", "old classes' forgetting"]]
    for g in class_groups(state, limit):
        values = (cell(g[k]) for k in ("old", "new", "all", "old_before"))
        forgot = "" if g["pass"] is None else drop_cell(g)
        rows.append([stage_label(g["stage"], state["stages"][g["stage"]]), g["unit"], *values, forgot])
    return rows


def verdict(state: dict[str, Any], limit: float) -> str:
    """PASS when every task, and the old classes of every stage adding classes, stay within `limit` and every stage
    kept weights, else FAIL."""
    groups = [g["pass"] is not False for g in class_groups(state, limit)]
    passed = all(d["pass"] for d in forgetting(state, limit).values()) and all(groups) and not unlearned_stages(state)
    return "PASS" if passed else "FAIL"


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


def run_summary(
    root: Path,
    state: dict[str, Any],
    limit: float,
    images: str | None = None,
    compare: str | None = None,
    memory: str | None = None,
) -> str:
    """The lines a protocol run ends with: each task's final score and forgetting, the verdict, BWT (and FWT with the
    run's ``baselines``), what the model's memory keeps (`memory`, in words), where the report and the weights are,
    the comparison command (`compare`) and the commands to try next (predict on `images`)."""
    weights = shown(root / "weights" / "best.pt")
    head = f"{colorstr('bold', 'Summary')}: {verdict(state, limit)}"
    lines = [f"{head} (a task may lose at most {limit:.0%} of its score)"]
    for t, d in forgetting(state, limit).items():
        result = "PASS" if d["pass"] else "FAIL"
        lines.append(f"  {t}  {PRIMARY[t]:<6} {d['final']:.3f}  forgetting {d['relative']:+6.1%}  {result}")
    for g in class_groups(state, limit):
        if g["pass"] is not None:
            result = "PASS" if g["pass"] else "FAIL"
            lines.append(
                f"  {g['task']}  stage {g['stage'] + 1}'s old classes {g['old']:.3f}  "
                f"forgetting {g['relative']:+6.1%}  {result}  (new {g['new']:.3f})"
            )
    baselines = load_baselines((state.get("config") or {}).get("baselines"))
    if found := [f"{k} {v:+.3f}" for k, v in protocol_transfer(state, baselines).items() if v is not None]:
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
    """Write forgetting.csv, forgetting.md (with the accuracy matrix, transfer and class groups), accuracy_matrix.csv
    and the plots into `root`, print the tables; return the Markdown."""
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


def annotate(ax: plt.Axes, values: np.ndarray, fmt: str) -> None:
    """Write each finite value of a heatmap in its cell (`fmt`: a format string, ``"{:+.1%}"``)."""
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8)


@plt_settings()
def plot_report(root: Path, state: dict[str, Any]) -> None:
    """Task scores across stages (lines), relative change per task and stage (heatmap), the accuracy matrix
    (heatmap), training curves per stage."""
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
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(stages), 1 + 0.8 * len(tasks)), tight_layout=True)
    im = ax.imshow(change * 100, cmap="RdYlGn", vmin=-20, vmax=20)
    annotate(ax, change, "{:+.1%}")
    ax.set(xticks=range(len(stages)), xticklabels=labels, yticks=range(len(tasks)), yticklabels=tasks)
    ax.set_title("Change vs score after own stage (%)")
    fig.colorbar(im, ax=ax)
    fig.savefig(root / "forgetting_heatmap.png", dpi=150)
    plt.close(fig)

    names, R = accuracy_matrix(state)
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(names), 1 + 0.6 * len(stages)), tight_layout=True)
    im = ax.imshow(R, cmap="YlGn", vmin=0, vmax=1)
    annotate(ax, R, "{:.3f}")
    ylabels = [f"after {stage_label(i, s)}" for i, s in enumerate(stages)]
    ax.set(xticks=range(len(names)), xticklabels=names, yticks=range(len(stages)), yticklabels=ylabels)
    ax.set_title("Accuracy matrix: score of each unit after each stage")
    fig.colorbar(im, ax=ax)
    fig.savefig(root / "accuracy_matrix.png", dpi=150)
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
