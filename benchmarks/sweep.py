"""The stability/plasticity sweep: stages 2 and 3 over a grid of settings, all from ONE shared stage-1 model (the
base ``benchmarks.hw2`` run's seed 0); the front's best re-run with more seeds. Commands: benchmarks/README.md."""

from __future__ import annotations

import json
import math
import sys
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from ultralytics.utils import YAML

from benchmarks import hw2
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
    stage_minutes,
    table,
    with_stage_paths,
)
from yolo_unified.common import PRIMARY_METRIC, SHARED_MODULES, STATE_FILE, listed
from yolo_unified.continual import STRATEGIES
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.protocol import read_state
from yolo_unified.workflows.report import forgetting, verdict

KEYS = {"data", "imgsz", "pretrained", "grid", "seeds", "front", "quick", "only", "base"}
GRID_KEYS = {"stages", "shared", "with_shared", "strategies", "combined"}


@dataclass
class GridConfig:
    """One configuration of the grid: the shared network's learning-rate multiplier and the strategies switched on in
    stages 2 and 3 (``{key: settings}``), with the two complete stages they make."""

    name: str
    shared: float
    strategies: dict[str, dict]
    stages: list[dict]


@dataclass
class Sweep(ProtocolSetup):
    """One invocation of the sweep: the protocol setup, the grid, the base run every grid run starts from (its
    default_seed0 state, absolute stage paths), the tasks in stage order, the base's single-task scores (for
    retention), the seeds of the front's configurations and the front's size."""

    grid: Path
    configs: list[GridConfig]
    base: Path
    base_state: dict[str, Any]
    tasks: list[str]
    single: dict[str, float | None]
    seeds: int
    front_size: int


def number(value: Any) -> str:
    """A strength or multiplier as it appears in a run name (``0.1``, ``10``, ``0``)."""
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def grid_config(stages: list[dict], shared: float, settings: dict[str, dict], strategies: dict) -> GridConfig:
    """The configuration with `shared` as the backbone/neck/tower multiplier of the varied stages and `settings` on in
    them; a stage with ``vary: False`` (already the protocol's own, see ``parse_grid``) runs as it is.

    Its name is ``shared<m>`` followed by ``-<key><strength>`` per strategy (joined by ``+``), the strength being the
    value of the strategy's ``param`` in `strategies`.
    """
    strengths = []
    for key, values in settings.items():
        param = strategies[key]["param"]
        if param not in values:
            raise ValueError(f"sweep grid: {key} settings {values} lack its strength '{param}'")
        strengths.append(f"{key}{number(values[param])}")
    name = f"shared{number(shared)}" + (f"-{'+'.join(strengths)}" if strengths else "")
    full = []
    for written in stages:
        stage = {k: v for k, v in deepcopy(written).items() if k != "vary"}
        if written.get("vary", True):
            own = {k: v for k, v in (stage.get("lr_mult") or {}).items() if k not in SHARED_MODULES}
            stage.update(lr_mult={**dict.fromkeys(SHARED_MODULES, float(shared)), **own}, **deepcopy(settings))
        full.append(stage)
    return GridConfig(name, float(shared), settings, full)


def held_stage(written: dict, protocol: list[dict]) -> dict:
    """A grid stage as it runs: a ``vary: False`` stage is the `protocol`'s own stage for its task, as written there
    (the grid names only the task, so the two files cannot drift apart); any other stage is the grid's."""
    if written.get("vary", True):
        return written
    task = written["task"]
    if extra := sorted(set(written) - {"task", "vary"}):
        raise ValueError(f"sweep grid: a 'vary: False' stage is the protocol's own {task} stage; drop {extra}")
    own = [s for s in protocol if s.get("task") == task]
    if len(own) != 1:
        raise ValueError(f"sweep grid: the protocol needs exactly one {task} stage to hold, not {len(own)}")
    return {**deepcopy(own[0]), "vary": False}


def parse_grid(grid: dict, protocol: list[dict], quick: bool = False) -> list[GridConfig]:
    """The configurations of a grid (cfg/sweep.yaml's layout), checked: one per ``shared`` multiplier without a
    strategy, then for each ``with_shared`` multiplier one per strategy strength and one per combination.

    `protocol` is the swept protocol's stages (``vary: False`` stages are taken from it). ``quick`` keeps the first
    ``shared`` and the first ``with_shared`` multiplier and the first strength of the first strategy (no combination).
    """
    if unknown := sorted(set(grid) - GRID_KEYS):
        raise ValueError(f"sweep grid: unknown key(s) {unknown}; valid: {sorted(GRID_KEYS)}")
    stages = grid.get("stages") or []
    if len(stages) != 2 or not all(isinstance(s, dict) and s.get("task") for s in stages):
        raise ValueError("sweep grid: 'stages' must be the two later stages, each a dict with a task (det, then cls)")
    if all(s.get("vary", True) is False for s in stages):
        raise ValueError("sweep grid: every stage has 'vary: False'; the grid would vary nothing")
    stages = [held_stage(s, protocol) for s in stages]
    strategies, combined = dict(grid.get("strategies") or {}), list(grid.get("combined") or [])
    known = sorted(set(STRATEGIES) - {"lr_mult"})
    for key in [*strategies, *(k for combination in combined for k in combination)]:
        if key not in known:
            hint = " (the shared multiplier sets lr_mult)" if key == "lr_mult" else ""
            raise ValueError(f"sweep grid: unknown strategy '{key}'{hint}; known strategies: {', '.join(known)}")
        if key not in strategies:
            raise ValueError(f"sweep grid: combined strategy '{key}' needs an entry in 'strategies' (its param)")
    for key, spec in strategies.items():
        if not isinstance(spec, dict) or "param" not in spec or not spec.get("values"):
            raise ValueError(f"sweep grid: strategies.{key} must be {{param: name, values: [...], fixed: {{...}}}}")
    shared, with_shared = list(grid.get("shared") or []), list(grid.get("with_shared") or [])
    if quick:
        shared, with_shared, combined = list(dict.fromkeys(shared[:1] + with_shared[:1])), with_shared[:1], []
        strategies = {k: {**spec, "values": spec["values"][:1]} for k, spec in list(strategies.items())[:1]}
    fixed = {k: dict(spec.get("fixed") or {}) for k, spec in strategies.items()}
    configs = [grid_config(stages, m, {}, strategies) for m in shared]
    for m in with_shared:
        for key, spec in strategies.items():
            for value in spec["values"]:
                configs.append(grid_config(stages, m, {key: {**fixed[key], spec["param"]: value}}, strategies))
        for combination in combined:
            settings = {k: {**fixed[k], **(values or {})} for k, values in combination.items()}
            configs.append(grid_config(stages, m, settings, strategies))
    names = [c.name for c in configs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"sweep grid: configuration(s) {twice} appear twice")
    return configs


def select(configs: list[GridConfig], only: Any) -> list[GridConfig]:
    """The configurations named in `only` (comma-separated; empty: all), in the order named (run order)."""
    if not only:
        return configs
    wanted = listed(only)
    names = [c.name for c in configs]
    if missing := [n for n in wanted if n not in names]:
        raise ValueError(f"only=: no configuration {missing} in the grid; its configurations: {names}")
    return [configs[names.index(n)] for n in dict.fromkeys(wanted)]


def run_cfg(seq: dict, config: GridConfig, seed: int, baselines: Path) -> dict:
    """A grid run's protocol: the recommended protocol's top-level keys and first stage, then the configuration's two
    stages."""
    top = {k: v for k, v in seq.items() if k != "stages"}
    stages = [deepcopy(seq["stages"][0]), *deepcopy(config.stages)]
    return {**top, "seed": seed, "baselines": str(baselines), "stages": stages}


def run_metrics(state: dict, tasks: list[str], single: dict[str, float], limit: float) -> dict[str, float | None]:
    """The numbers of one grid run (None where undefined).

    ``<new>_stage<k>``: the score of stage k's task right after it; ``<task>_forgetting_stage<k>`` and
    ``worst_forgetting_stage<k>``: relative forgetting of the tasks finished before stage k, after it;
    ``<task>_final``: scores after the last stage; ``<task>_retention``: final score of a later task over its
    single-task score, and their ``mean_retention``; ``minutes``: training time of stages 2 and 3.
    """
    metrics: dict[str, float | None] = {}
    for k in range(2, len(tasks) + 1):
        new = tasks[k - 1]
        metrics[f"{new}_stage{k}"] = state["stages"][k - 1]["scores"][new][PRIMARY_METRIC[new]]
        after = forgetting({**state, "stages": state["stages"][:k]}, limit)  # the report as it stood after stage k
        drops = {t: d["relative"] for t, d in after.items() if t != new}
        metrics.update({f"{t}_forgetting_stage{k}": v for t, v in drops.items()})
        metrics[f"worst_forgetting_stage{k}"] = max(drops.values())
    final = state["stages"][-1]["scores"]
    metrics.update({f"{t}_final": final[t][PRIMARY_METRIC[t]] for t in tasks})
    retention = {t: final[t][PRIMARY_METRIC[t]] / single[t] if single.get(t) else None for t in tasks[1:]}
    metrics.update({f"{t}_retention": v for t, v in retention.items()})
    known = [v for v in retention.values() if v is not None]
    metrics["mean_retention"] = sum(known) / len(known) if known else None
    metrics["minutes"] = sum(stage_minutes(state)[1:])  # stage 1 is the base's, trained once
    return metrics


def config_run(config: GridConfig, seed: int, sweep: Sweep) -> Run:
    """The `Run` of one configuration with one seed: the recommended protocol's top-level keys and first stage (the
    base's, shared), then the configuration's two stages; refuses a folder started with other stage-2/3 settings
    (the grid's recipe changed since: its name and scores would no longer match)."""
    name, top = f"{config.name}-seed{seed}", {k: v for k, v in sweep.seq.items() if k != "stages"}
    stages = [deepcopy(sweep.seq["stages"][0]), *deepcopy(config.stages)]
    cfg = {**top, "seed": seed, "baselines": str(sweep.base / "baselines"), "stages": stages}
    state_file = sweep.report.out / name / STATE_FILE
    config_was = json.loads(state_file.read_text()).get("config") if state_file.is_file() else None
    if config_was and config_was["stages"][1:] != [{**s, **sweep.force} for s in stages[1:]]:
        raise ValueError(
            f"{state_file.parent} was started with other stage-2/3 settings than the grid's: pass a new out="
        )

    def score(_: Path, state: dict) -> dict[str, Any]:
        return {
            "metrics": run_metrics(state, sweep.tasks, sweep.single, sweep.limit),
            "pass": verdict(state, sweep.limit) == "PASS",
            "verdict": run_verdict(state, sweep.limit),
        }

    return protocol_run(sweep, name, cfg, score, {"configuration": config.name, "seed": seed}, lambda: sweep.base_state)


def aggregate(runs: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean, min and max over the seeds' runs of every number (None where no run has it)."""
    out = {}
    for key in runs[0]["metrics"]:
        values = [r["metrics"][key] for r in runs if r["metrics"][key] is not None]
        out[key] = (
            {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
            if values
            else dict.fromkeys(("mean", "min", "max"))
        )
    return out


def rank_configs(names: list[str], stats: dict[str, dict], limit: float) -> list[str]:
    """`names` best first: those whose worst forgetting after stage 3 is within `limit` (the candidates for the
    recommended protocol) by mean retention, then the rest by worst forgetting (unknown last)."""

    def key(n: str) -> tuple[bool, float]:
        worst, retention = (stats[n][k]["mean"] for k in ("worst_forgetting_stage3", "mean_retention"))
        if worst is not None and worst <= limit:
            return False, -math.inf if retention is None else -retention
        return True, math.inf if worst is None else worst

    return sorted(names, key=key)


def recommended_text(results: dict) -> str:
    """The recommendation as Markdown: a snippet of its two stages for the protocol swept, or why there is none."""
    name, protocol = results["recommended"], results.get("protocol", "cfg/seq.yaml")
    if name is None:
        return (
            "None: no configuration with a shared multiplier > 0 passes the forgetting limit on every seed it ran "
            f"with (and has a retention). Keep {protocol}'s stages 2 and 3."
        )
    c = results["configurations"][name]
    snippet = yaml.safe_dump(c["stages"], sort_keys=False, default_flow_style=None, width=120)
    snippet = "\n".join("  " + line for line in snippet.splitlines())
    return (
        f"`{name}`: mean retention {c['metrics']['mean_retention']['mean']:.1%}, worst forgetting "
        f"{c['metrics']['worst_forgetting_stage3']['mean']:+.1%} after stage 3, PASS on its {len(c['seeds'])} "
        f"seed(s). Stages 2 and 3 for {protocol} (in place of its last two stages; quick mode's overrides not "
        f"included):\n\n```yaml\nstages:\n  # - stage 1 as it is\n{snippet}\n```"
    )


def overview(results: dict) -> list[str]:
    """The summary's budget, grid, references and training time."""
    single = results["base"]["single_task"]
    scores = ", ".join(f"{t} {METRIC_NAME[t]} {v:.4f}" for t, v in single.items() if v is not None)
    seeds = (
        f"the {results['front_size']} best after seed 0 (within the forgetting limit by mean retention, then the "
        f"least worst forgetting after stage 3) re-run with seeds "
        f"1..{results['seeds'] - 1}: " + ", ".join(f"`{n}`" for n in results["front"])
        if results["front"]
        else "one seed each"
    )
    return [
        f"- budget: {results['budget']}; stage 1 trained once (`{results['base']['root']}/default_seed0`) and shared",
        f"- grid: `{results['grid']['file']}`{' (quick: reduced)' if results['quick'] else ''}, "
        f"{len(results['configurations'])} configurations at seed 0; {seeds}",
        f"- single-task scores (`{results['base']['root']}/baselines`, for retention): {scores}; limit: "
        f"{results['forget_limit']:.0%} relative forgetting of every finished task",
        f"- scores: the validators' after each stage (each run's protocol.json, no bootstrap); several seeds: mean "
        f"[min, max]; training time of the grid runs (stages 2 and 3, every seed): {results['training_minutes']:.1f} "
        "min",
    ]


def configurations_table(results: dict) -> list[str]:
    """Every configuration's scores, forgetting, retention, verdict and training time, the least forgetting first."""
    first, mid, last = results["tasks"]
    columns = {  # header: (metric, format)
        f"{mid} {METRIC_NAME[mid]}": (f"{mid}_final", "{:.4f}"),
        f"{last} {METRIC_NAME[last]}": (f"{last}_final", "{:.4f}"),
        f"{first} forgetting": (f"{first}_forgetting_stage3", "{:+.1%}"),
        f"{mid} forgetting": (f"{mid}_forgetting_stage3", "{:+.1%}"),
        f"{first} forgetting after stage 2": (f"{first}_forgetting_stage2", "{:+.1%}"),
        f"{mid} retention": (f"{mid}_retention", "{:.1%}"),
        f"{last} retention": (f"{last}_retention", "{:.1%}"),
    }
    configs = results["configurations"]

    def cell(stat: dict, form: str, seeds: int) -> str:  # the seed mean, with [min, max] over several seeds
        if stat["mean"] is None:
            return "-"
        text = form.format(stat["mean"])
        return text + f" [{form.format(stat['min'])}, {form.format(stat['max'])}]" if seeds > 1 else text

    def order(name: str) -> tuple[float, float]:  # worst forgetting after stage 3 (unknown last), then retention
        worst, retention = (configs[name]["metrics"][k]["mean"] for k in ("worst_forgetting_stage3", "mean_retention"))
        return math.inf if worst is None else worst, -(retention or 0)

    rows = []
    for name in sorted(configs, key=order):
        c, n, passes = configs[name], len(configs[name]["seeds"]), sum(configs[name]["passes"])
        verdict_cell = "PASS" if passes == n else "FAIL" if not passes else f"PASS {passes}/{n}"
        cells = [cell(c["metrics"][key], form, n) for key, form in columns.values()]
        rows.append([name, n, *cells, verdict_cell, f"{c['training_minutes']:.1f}"])
    head = ["configuration", "seeds", *columns, "verdict", "training (min)"]
    return table("Configurations (sorted by worst forgetting after stage 3)", head, rows)


def tables(results: dict) -> list[list[str]]:
    """The sweep's summary after its header: settings, the table of every configuration and the recommendation."""
    return [overview(results), configurations_table(results), ["## Recommended", "", recommended_text(results)]]


def start(report: Report) -> Sweep:
    """The sweep's setup: its grid and its base benchmarks.hw2 output (``base=``, else ``<out>/base``, run first when
    missing), whose default_seed0 must have this sweep's settings and its stage-1 weights here."""
    setup, args = ProtocolSetup.start(report), report.args
    regime_grid = "sweep-pretrained.yaml" if setup.protocol.name == "seq-pretrained.yaml" else "sweep.yaml"
    grid = Path(args.get("grid", CFG_DIR / regime_grid))
    configs = select(parse_grid(YAML.load(grid), setup.seq["stages"], report.quick), args.get("only"))
    if not configs:
        raise ValueError(f"{grid}: the grid has no configuration")
    base = repo_path(args["base"]).resolve() if "base" in args else report.out / "base"
    if "base" in args and not (base / "results.json").is_file():
        raise FileNotFoundError(f"base={args['base']}: no benchmarks.hw2 results.json there")
    if not (base / "results.json").is_file():  # the shared stage 1 and the single-task models (resumable itself)
        passed = [f"{k}={args[k]}" for k in ("data", "imgsz", "pretrained", "quick") if k in args]
        hw2.main([*passed, f"out={base}", "seeds=1", "speed=False"])
    state = read_state(base / "default_seed0")
    state = {**state, "stages": with_stage_paths(state["stages"], repo_path)}
    used, mine = state["config"]["common"], {**setup.settings, **setup.force}

    def norm(key: str, value: Any) -> Any:
        return value if value is None or key == "imgsz" else repo_path(value).resolve()

    if differ := [f"{k}={used.get(k)} (this sweep: {mine.get(k)})" for k in ("data", "imgsz", "pretrained")
                  if norm(k, used.get(k)) != norm(k, mine.get(k))]:  # fmt: skip
        raise ValueError(f"{base} was trained with {', '.join(differ)}: pass the same settings or a new out=")
    if not Path(state["stages"][0]["weights"]).is_file():
        raise FileNotFoundError(f"{base}: the shared stage-1 weights are not here (a clone has only the reports)")
    tasks = [setup.seq["stages"][0]["task"], *(s["task"] for s in configs[0].stages)]
    baselines = json.loads((base / "results.json").read_text())["runs"]["baselines"]["final"]
    single = {t: baselines.get(t, {}).get("value") for t in tasks}
    seeds = int(args.get("seeds", 2))
    front = min(int(args.get("front", 3)), len(configs)) if seeds > 1 else 0
    return Sweep(**vars(setup), grid=grid, configs=configs, base=base, base_state=state, tasks=tasks, single=single,
                 seeds=seeds, front_size=front)  # fmt: skip


def grid_runs(sweep: Sweep) -> tuple[dict[str, dict], list[str]]:
    """Every configuration with seed 0, then the `front_size` best (`rank_configs`) with the further seeds; return
    the runs' records and that front."""
    configs, n_front, report = sweep.configs, sweep.front_size, sweep.report
    runs: dict[str, dict] = {}
    recorded = report.previous.get("runs", {})
    execute([config_run(c, 0, sweep) for c in configs], report.out, recorded, runs.__setitem__, report.bench.module)
    seed0 = {c.name: aggregate([runs[f"{c.name}-seed0"]]) for c in configs}
    front = rank_configs([c.name for c in configs], seed0, sweep.limit)[:n_front]
    further = [config_run(c, seed, sweep) for seed in range(1, sweep.seeds if n_front else 1) for c in configs
               if c.name in front]  # fmt: skip
    execute(further, report.out, recorded, runs.__setitem__, report.bench.module)
    return runs, front


def configuration_records(configs: list[GridConfig], runs: dict[str, dict]) -> dict[str, dict]:
    """Per configuration: its settings (``family``: the strategy keys joined by '+'; ``frozen``: the shared network
    not trained, no strategy), seeds and verdicts, and every number over its seeds."""
    records = {}
    for c in configs:
        mine = [r for r in runs.values() if r["configuration"] == c.name]
        records[c.name] = {
            "shared": c.shared,
            "strategies": c.strategies,
            "family": "+".join(c.strategies) or "none",
            "frozen": c.shared == 0 and not c.strategies,
            "stages": c.stages,
            "seeds": [r["seed"] for r in mine],
            "passes": [r["pass"] for r in mine],
            "metrics": aggregate(mine),
            "training_minutes": sum(r["metrics"]["minutes"] for r in mine),
        }
    return records


def recommended_config(configurations: dict[str, dict]) -> str | None:
    """The best mean retention among the configurations that train the shared network (multiplier > 0) and pass on
    every seed they ran with; None when there is none."""
    eligible = [
        n for n, c in configurations.items()
        if c["shared"] > 0 and all(c["passes"]) and c["metrics"]["mean_retention"]["mean"] is not None
    ]  # fmt: skip
    return max(eligible, key=lambda n: configurations[n]["metrics"]["mean_retention"]["mean"], default=None)


def run(report: Report) -> None:
    """The sweep: every grid run, then each configuration's record and the recommendation into results.json."""
    sweep = start(report)
    runs, front = grid_runs(sweep)
    configurations = configuration_records(sweep.configs, runs)
    protocol = {"stages": [sweep.seq["stages"][0], *sweep.configs[0].stages]}
    report.results.update(
        budget=budget_text(protocol, sweep.settings["imgsz"], sweep.force),
        tasks=sweep.tasks,
        seeds=sweep.seeds,
        front_size=sweep.front_size,
        grid={"file": repo_relative(sweep.grid.resolve()), "only": report.args.get("only")},
        base={"root": repo_relative(sweep.base), "single_task": sweep.single},
        training_minutes=sum(r["metrics"]["minutes"] for r in runs.values()),
        front=front,
        recommended=recommended_config(configurations),
        configurations=configurations,
        runs=runs,
    )


TITLE = "Stability/plasticity sweep ({regime})"
BENCHMARK = Benchmark("benchmarks.sweep", KEYS, "benchmarks/results/hw2-sweep", TITLE, run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
