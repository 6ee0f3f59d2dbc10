"""The joint section of benchmarks.hw2: the regime's joint recipe (cfg/joint.yaml; cfg/joint-pretrained.yaml with
``pretrained=``) once per balancing method at seed 0 and with more seeds for its own method, each task scored with a
95% bootstrap interval, and delta_m: the mean relative change against the single-task baselines (Maninis et al.)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils import YAML

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import Run, execute, train_or_resume, trained_record
from yolo_unified.balancing import BALANCERS
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.nn.tasks import CFG_DIR


def joint_recipe(pretrained: bool) -> Path:
    """The joint recipe of a regime: cfg/joint-pretrained.yaml with ``pretrained=`` weights, else cfg/joint.yaml."""
    return CFG_DIR / ("joint-pretrained.yaml" if pretrained else "joint.yaml")


def task_keys(cfg: dict[str, Any], task: str) -> dict[str, Any]:
    """The keys a joint recipe `cfg` trains `task` with: the recipe's, with the task's own ``task_args`` over them
    (classification at its own image size)."""
    return {**cfg, **((cfg.get("task_args") or {}).get(task) or {})}


def delta_m(scores: dict[str, float], baselines: dict[str, float]) -> float:
    """Mean relative change (%) of each task's primary metric against its single-task score (higher is better)."""
    changes = [(scores[t] - baselines[t]) / baselines[t] for t in scores if baselines.get(t)]
    return 100 * float(np.mean(changes)) if changes else float("nan")


def unified_run(
    name: str, cfg: dict, scoring: dict[str, str], n_boot: int, record: dict, baselines: dict | None = None
) -> Run:
    """A unified run (joint, or one task with ``task=``) trained with `cfg` by `train_or_resume`, each task of
    `scoring` (task -> data YAML) scored on that data's val split with its 95% interval; its record adds
    `trained_record`'s entries, and delta_m against the single-task scores `baselines` when given."""

    def score(root: Path, trained: tuple[Path, float | None]) -> dict[str, Any]:
        weights, peak = trained
        final = {}
        for task, data in scoring.items():
            names, imgsz = load_data_config(data)["tasks"][task]["names"], task_keys(cfg, task)["imgsz"]
            final[task] = bootstrapped(str(weights), data, task, imgsz, names, n_boot, root / "bootstrap" / task)
        change = {"delta_m": delta_m({t: s["value"] for t, s in final.items()}, baselines)} if baselines else {}
        return {**trained_record(root, cfg, weights, peak), "final": final, **change}

    return Run(name, partial(train_or_resume, cfg=cfg), score, record)


def joint_runs(
    out: Path,
    settings: dict[str, Any],
    force: dict[str, Any],
    methods: list[str],
    seeds: int,
    baselines: dict[str, float],
    n_boot: int,
    kept: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train and score every method at seed 0 and the default recipe at seeds 1..seeds-1.

    `settings` are the benchmark's keys of every run (data, imgsz, pretrained), `force` keys win over the recipe's and
    `baselines` holds the single-task scores for delta_m. The recipe is the regime's (``joint_recipe``); a method
    other than the recipe's own ``balance`` runs without the recipe's ``balance_args`` (they are that method's
    settings). The runs recorded in `kept` (an earlier invocation's) are kept as the planner (`execute`) decides.
    """
    recipe = joint_recipe("pretrained" in settings)
    joint = YAML.load(recipe)
    if unknown := [m for m in methods if m not in BALANCERS]:
        raise ValueError(f"joint_methods: unknown method(s) {unknown}; valid methods: {', '.join(BALANCERS)}")
    default = joint["balance"]  # the recipe's runs first (its seeds measure the noise), then the other methods
    plan = [(default, 0)] * (default in methods) + [(default, k) for k in range(1, seeds)]
    plan += [(m, 0) for m in methods if m != default]
    scoring = dict.fromkeys(task_names(load_data_config(settings["data"])), settings["data"])

    def planned(method: str, seed: int) -> Run:
        cfg = {**joint, **settings, "balance": method, "seed": seed, **force}
        if method != default:
            cfg["balance_args"] = None
        if all(baselines.values()):  # best.pt by the mean retention (a zero baseline leaves the plain mean)
            cfg["baselines"] = str(out / "baselines")
        record = {"method": method, "seed": seed, "recipe": f"cfg/{recipe.name}", "default": method == default}
        return unified_run(f"joint_{method}_seed{seed}", cfg, scoring, n_boot, record, baselines)

    results: dict[str, dict[str, Any]] = {}
    execute((planned(m, k) for m, k in plan), out, kept or {}, results.__setitem__, "benchmarks.hw2")
    return results
