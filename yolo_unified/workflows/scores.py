"""The numbers of the forgetting report: each task's forgetting and the verdict, the accuracy matrix of the units a
protocol learns with backward and forward transfer, and the old / new class groups of the stages that add classes."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from yolo_unified.common import PRIMARY_METRIC


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
    """Backward and forward transfer of the accuracy matrix `R` (stages x units, unit j learned at stage ``s_j =
    learned_at[j]``): BWT = mean over j learned before the last stage of (R[T-1, j] - R[s_j, j]), GEM's as Avalanche
    computes it (negative: forgetting); FWT = mean over j learned after stage 1 of (R[s_j, j] - `baseline`[j]), j's
    score trained alone (negative: earlier stages hinder it). NaN pairs are left out; None when none is left."""
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


def verdict(state: dict[str, Any], limit: float) -> str:
    """PASS when every task and every stage's old classes stay within `limit` and every stage kept weights."""
    groups = [g["pass"] is not False for g in class_groups(state, limit)]
    passed = all(d["pass"] for d in forgetting(state, limit).values()) and all(groups) and not unlearned_stages(state)
    return "PASS" if passed else "FAIL"
