"""Adding classes to a task: a model trained on some classes learns more from data that labels only the new ones.

Per section (synth: the built-in data, circle and rectangle then triangle; hw2: VOC 15+5, detection 5+5), task and
seed, four runs: ``old`` (stage 1), ``finetune`` (lower bound), ``recipe`` (cfg/add-classes.yaml or ``recipe=``) and
``joint`` (every class at once, upper bound); each scored per class in groups old / new / all. Commands:
benchmarks/README.md.
"""

from __future__ import annotations

import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils import LOGGER, YAML

from benchmarks.bootstrap import per_image_records, percentiles, record_class_scores, resamples
from benchmarks.common import (
    METRIC_NAME,
    QUICK,
    REPO,
    Benchmark,
    Report,
    Run,
    execute,
    repo_relative,
    run_benchmark,
    score_text,
    table,
    train_or_resume,
    trained_record,
)
from yolo_unified.common import listed
from yolo_unified.data.class_split import read_class_mask, split_classes
from yolo_unified.data.config import image_files, label_file, load_data_config, task_data
from yolo_unified.data.prepare import IGNORE, prepare_hw2
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.base import default_data

MODULE = "benchmarks.add_classes"
KEYS = {"sections", "tasks", "seeds", "quick", "n_boot", "pretrained", "synth", "synth_val", "hw2", "recipe"}
SECTIONS = {"synth": ("det", "seg", "cls"), "hw2": ("seg", "det")}  # section -> its tasks
METHODS = ("old", "finetune", "recipe", "joint")
GROUPS = ("old", "new", "all")
EPOCHS = {"old": 30, "finetune": 20, "recipe": 20, "joint": 30}
SYNTH_FIRST = ["circle", "rectangle"]  # stage 1 of every synth task; stage 2: triangle
HW2_DET_FIRST = ["person", "car", "dog", "cat", "chair"]  # det 5+5
VOC_FIRST = 15  # seg 15+5: VOC classes 1-15 first
OPTIMIZER = {"optimizer": "AdamW", "lr0": 0.002, "cos_lr": True, "warmup_epochs": 1, "plots": False}
SETTINGS = {  # section -> the keys of its every run (epochs, seed, task and data are the run's)
    "synth": {
        **{k: v for k, v in YAML.load(CFG_DIR / "synth.yaml").items() if k != "epochs"},
        **OPTIMIZER,
        "workers": 0,
    },
    "hw2": {"imgsz": 320, "batch": 16, "nbs": 16, **OPTIMIZER},
}
RECIPE = CFG_DIR / "add-classes.yaml"  # the recipe run's keys (old_labels, old_distill, replay), unless recipe=
TRIVIAL = {"seg": "background everywhere", "det": "no boxes", "cls": "chance"}  # the trivial row of a table
TARGETS = {"loss": 5.0, "reach": 90.0}  # synth verdicts: old classes lose <= 5%; all classes reach >= 90% of joint


def stage_classes(section: str, task: str, names: dict[int, str]) -> tuple[list[str], list[str]]:
    """The class names of stage 1 and stage 2 of a task (seg: without the background, which every subset keeps)."""
    classes = [name for i, name in sorted(names.items()) if not (task == "seg" and i == 0)]
    if section == "synth":
        first = SYNTH_FIRST
    else:
        first = classes[:VOC_FIRST] if task == "seg" else HW2_DET_FIRST
    return list(first), [c for c in classes if c not in first]


def class_groups(task: str, names: dict[int, str], first: list[str], second: list[str]) -> dict[str, list[str]]:
    """The classes each score group averages: old (stage 1; seg: the background first), new (stage 2), all."""
    old = [names[0], *first] if task == "seg" else list(first)
    return {"old": old, "new": list(second), "all": [*old, *second]}


def longer_val(data: str, n_val: int) -> str:
    """The synthetic data `data` (made by ``make_synthetic``, whose parameters its YAML records) with a val split of
    `n_val` images per task, generated beside it as ``<name>-val<n_val>``: the same images, more of them."""
    params = YAML.load(data).get("synthetic")
    if not isinstance(params, dict):
        raise ValueError(f"synth_val: {data} was not made by the synthetic generator (no 'synthetic' record)")
    dst = Path(data).with_suffix("").with_name(f"{Path(data).stem}-val{n_val}")
    kept = {k: params[k] for k in ("n_train", "imgsz", "seed")}
    return str(make_synthetic(dst, n_val=n_val, **kept))


def section_data(section: str, args: dict[str, Any], folder: Path, tasks: list[str]) -> dict[str, dict] | None:
    """Each task's data of a section: the full data YAML, the stage subsets written into `folder` and the class
    groups; None (with a warning) when the HW2 data is not there."""
    if section == "synth":
        full = str(args["synth"]) if args.get("synth") else default_data(REPO / "datasets")
    else:
        raw = Path(str(args.get("hw2", "../shared/data/hw2")))  # as given: datasets/hw2.yaml records it
        if not raw.is_dir():
            LOGGER.warning(f"{MODULE}: no HW2 data at {raw.resolve()}: the hw2 section is skipped (give hw2=<folder>)")
            return None
        full = str(prepare_hw2(raw, REPO / "datasets" / "hw2")["yaml"])
    scored = longer_val(full, int(args["synth_val"])) if section == "synth" and args.get("synth_val") else full
    cfg, out = load_data_config(full), {}
    for task in tasks:
        names = cfg["tasks"][task]["names"]
        first, second = stage_classes(section, task, names)
        out[task] = {
            "full": full,
            "old": str(split_classes(full, task, first, folder / f"{section}-{task}-old")),
            "new": str(split_classes(full, task, second, folder / f"{section}-{task}-new")),
            "scored": scored,
            "scored_old": str(split_classes(scored, task, first, folder / f"{section}-{task}-old-scored"))
            if scored != full and task == "cls"
            else None,
            "groups": class_groups(task, names, first, second),
        }
    return out


def run_name(section: str, task: str, method: str, seed: int) -> str:
    """The folder and results.json key of a run."""
    return f"{section}_{task}_{method}_seed{seed}"


def run_plan(tasks: dict[str, list[str]], seeds: int) -> list[tuple[str, str, str, int]]:
    """Every run as (section, task, method, seed): seed 0 of every section first, so that a cut-short invocation has
    one of each; a task's old run before the two that start from it."""
    return [
        (section, task, method, seed)
        for seed in range(seeds)
        for section, section_tasks in tasks.items()
        for task in section_tasks
        for method in METHODS
    ]


def run_cfg(
    plan: tuple[str, str, str, int], data: dict[str, Any], out: Path, pretrained: str | None, recipe: dict[str, Any]
) -> dict:
    """The training keys of a planned run: its section's settings, its epochs, seed and data; the stage-2 runs start
    from the old run's best.pt, the recipe run adds `recipe`'s keys; `pretrained` weights start old and joint."""
    section, task, method, seed = plan
    cfg = {**SETTINGS[section], "task": task, "seed": seed, "epochs": EPOCHS[method]}
    if method == "old" and "replay" in recipe:  # stage 1 keeps as many images (exemplars) as the recipe replays
        cfg["replay"] = {"size": recipe["replay"]["size"]}
    if method in ("old", "joint"):
        cfg["data"] = data["old" if method == "old" else "full"]
        if pretrained:
            cfg["pretrained"] = pretrained
    else:
        cfg.update(data=data["new"], model=str(out / run_name(section, task, "old", seed) / "weights" / "best.pt"))
    return {**cfg, **(recipe if method == "recipe" else {})}


def group_scores(per_class: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float | None]:
    """The mean score of each group's classes that `per_class` holds (those with val labels that the model has);
    None for a group without any, and for ``all`` unless both old and new have a score."""
    scores = {g: [per_class[c] for c in groups[g] if c in per_class] for g in ("old", "new")}
    out = {g: statistics.mean(v) if v else None for g, v in scores.items()}
    out["all"] = statistics.mean(scores["old"] + scores["new"]) if all(scores.values()) else None
    return out


def trivial_scores(task: str, data: str, groups: dict[str, list[str]]) -> dict[str, float | None]:
    """The group scores of a model that learned nothing, on the val split of `task` of `data`: background everywhere
    (seg: the background's IoU is its share of the labelled pixels of the stored masks; every other class with val
    pixels scores 0), no boxes (det: 0), or chance (cls: a class drawn at random has a recall of 1 / the classes)."""
    if task != "seg":
        return group_scores({c: 0.0 if task == "det" else 1 / len(groups["all"]) for c in groups["all"]}, groups)
    section, counts = task_data(load_data_config(data), "seg", ("val",)), np.zeros(256, np.int64)
    for image in image_files(section["val"]):
        counts += np.bincount(read_class_mask(label_file(image, "seg", section)).ravel(), None, 256)
    background = float(counts[0] / counts[:IGNORE].sum())
    return group_scores(
        {name: background if i == 0 else 0.0 for i, name in section["names"].items() if counts[i]}, groups
    )


def grouped_scores(
    weights: str, data: str, task: str, imgsz: int, groups: dict[str, list[str]], n_boot: int, save_dir: Path
) -> dict[str, Any]:
    """Score `weights` on the val split of `task` of `data`: each class, and each group with its 95% bootstrap
    interval (the groups of one resample of the val images are computed together, from its per-class scores)."""
    _, records, validator = per_image_records(weights, data, task, imgsz, save_dir)
    per_class = record_class_scores(task, records, validator.names)
    values: dict[str, list[float]] = {g: [] for g in GROUPS}
    for sample in resamples(records, n_boot):
        for g, v in group_scores(record_class_scores(task, sample, validator.names), groups).items():
            if v is not None:  # a resample without any image of a group's classes says nothing of it
                values[g].append(v)
    final = {
        g: {"value": v, "ci95": list(percentiles(values[g]))} if v is not None else None
        for g, v in group_scores(per_class, groups).items()
    }
    return {"final": final, "per_class": per_class, "n_images": len(records)}


def planned_run(plan: tuple[str, str, str, int], cfg: dict, data: dict[str, Any], n_boot: int) -> Run:
    """One run of the plan: trained with `cfg` (a stage-2 run once its old run's weights are there), scored per
    class and group on the scoring data's val split (the full data, or the larger val of ``synth_val``; the old
    classification model on its stage-1 subset of it: validation leaves out the images of classes a model lacks, and
    at batch 1 such an image is an empty batch, which Ultralytics' AutoBackend fails on); a finished run scored on the
    same data with the same `n_boot` is kept as recorded."""
    section, task, method, seed = plan
    scoring = (data["scored_old"] or data["old"]) if (task, method) == ("cls", "old") else data["scored"]

    def trained(root: Path) -> tuple[Path, float | None]:
        if "model" in cfg and not Path(cfg["model"]).is_file():
            raise FileNotFoundError(f"{root.name} starts from {cfg['model']}, which is not there: train its old run")
        return train_or_resume(root, cfg)

    def score(root: Path, weights_peak: tuple[Path, float | None]) -> dict[str, Any]:
        weights, peak = weights_peak
        scores = grouped_scores(str(weights), scoring, task, cfg["imgsz"], data["groups"], n_boot, root / "bootstrap")
        return {**trained_record(root, cfg, weights, peak), **scores}

    fixed = {"section": section, "task": task, "method": method, "seed": seed}
    return Run(run_name(*plan), trained, score, fixed, {"scored_on": repo_relative(scoring), "n_boot": n_boot})


def run(report: Report) -> None:
    """The sections the command line names: their data, classes and trivial scores, then every run, saved as each
    is made."""
    args, out, previous = report.args, report.out, report.previous
    sections = listed(args.get("sections", list(SECTIONS)))
    if unknown := set(sections) - set(SECTIONS):
        raise ValueError(f"sections: unknown {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    chosen = listed(args.get("tasks", "det,seg,cls"))
    if unknown := set(chosen) - {"det", "seg", "cls"}:
        raise ValueError(f"tasks: unknown {sorted(unknown)}; valid: det, seg, cls")
    force = {k: v for k, v in QUICK.items() if k != "fraction"} if report.quick else {}  # tiny data: every image
    pretrained = str(args["pretrained"]) if args.get("pretrained") else None
    recipe = YAML.load(args.get("recipe") or RECIPE)
    data = {}
    for section in (s for s in SECTIONS if s in sections):
        tasks = [t for t in SECTIONS[section] if t in chosen]
        if tasks and (found := section_data(section, args, out / "data", tasks)) is not None:
            data[section] = found
    plan = run_plan({s: list(tasks) for s, tasks in data.items()}, int(args.get("seeds", 2)))
    names = {run_name(*p) for p in plan}
    report.results.update(
        settings={
            **{s: {**SETTINGS[s], **force} for s in SECTIONS},
            "epochs": {m: force.get("epochs", e) for m, e in EPOCHS.items()},
            "recipe": recipe,
        },
        pretrained=repo_relative(pretrained) if pretrained else None,
        skipped=[s for s in sections if s not in data],
        classes=per_task(
            previous.get("classes", {}), {s: {t: d["groups"] for t, d in ts.items()} for s, ts in data.items()}
        ),
        trivial=per_task(
            previous.get("trivial", {}),
            {s: {t: trivial_scores(t, d["scored"], d["groups"]) for t, d in ts.items()} for s, ts in data.items()},
        ),
        runs={n: r for n, r in previous.get("runs", {}).items() if n not in names},  # other sections' runs
    )
    n_boot = int(args.get("n_boot", 1000))

    def run_of(p: tuple[str, str, str, int]) -> Run:
        cfg = run_cfg(p, data[p[0]][p[1]], out, pretrained if p[0] == "hw2" else None, recipe)
        return planned_run(p, {**cfg, **force}, data[p[0]][p[1]], n_boot)

    execute(map(run_of, plan), out, previous.get("runs", {}), report.keep, MODULE)


def per_task(previous: dict[str, dict], new: dict[str, dict]) -> dict[str, dict]:
    """``{section: {task: value}}`` of `previous` with `new`'s values in place (a section's other tasks kept)."""
    return {s: {**previous.get(s, {}), **new.get(s, {})} for s in {**previous, **new}}


def seed_runs(results: dict[str, Any], section: str, task: str, method: str) -> list[dict[str, Any]]:
    """The runs of one method of a task, by seed."""
    runs = [r for r in results["runs"].values() if (r["section"], r["task"], r["method"]) == (section, task, method)]
    return sorted(runs, key=lambda r: r["seed"])


def cell(runs: list[dict[str, Any]], group: str) -> str:
    """A table cell: each seed's ``value [lo, hi]``, and with more than one seed their mean ± half their range
    (min-max) first."""
    scores = [r["final"][group] for r in runs if r["final"].get(group)]
    each, values = "; ".join(score_text(s, 3) for s in scores), [s["value"] for s in scores]
    if len(scores) < 2:
        return each or "-"
    return f"**{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}** ({each})"


def verdict_lines(results: dict[str, Any], section: str, task: str) -> list[str]:
    """The two verdicts of a task from seed means: the relative drop of the old classes' score from the old model's
    to the recipe's, and the recipe's all-class score as a share of the joint run's; with targets for synth."""

    def mean(method: str, group: str) -> float | None:
        runs = seed_runs(results, section, task, method)
        values = [r["final"][group]["value"] for r in runs if r["final"].get(group)]
        return statistics.mean(values) if values else None

    old, kept = mean("old", "old"), mean("recipe", "old")
    recipe_all, joint_all = mean("recipe", "all"), mean("joint", "all")
    verdicts = []
    if old and kept is not None:
        loss = 100 * (old - kept) / old
        verdicts.append((f"old classes lose {loss:.1f}%", f"<= {TARGETS['loss']:.0f}%", loss <= TARGETS["loss"]))
    if joint_all and recipe_all is not None:
        reach = 100 * recipe_all / joint_all
        text = f"all classes reach {reach:.1f}% of training all at once"
        verdicts.append((text, f">= {TARGETS['reach']:.0f}%", reach >= TARGETS["reach"]))
    lines = []
    for text, goal, met in verdicts:
        lines.append(f"- {text}" + (f" (target {goal}): {'met' if met else 'missed'}" if section == "synth" else ""))
    return lines


def task_table(results: dict[str, Any], section: str, task: str) -> list[str]:
    """One task of a section: each method's group scores (a heading lists a group's classes, or their number when
    there are many), the trivial scores and the verdicts."""
    rows = {m: seed_runs(results, section, task, m) for m in METHODS}
    if not any(rows.values()):
        return []
    groups = results["classes"].get(section, {}).get(task) or {}
    label = {g: ", ".join(groups[g]) if len(groups[g]) <= 5 else f"{len(groups[g])} classes" for g in groups}
    heads = [f"{g} ({label[g]})" if g in groups and g != "all" else g for g in GROUPS]
    n_images = max(r["n_images"] for runs in rows.values() for r in runs)
    cells = [[m, *(cell(runs, g) for g in GROUPS)] for m, runs in rows.items() if runs]
    if trivial := results.get("trivial", {}).get(section, {}).get(task):
        values = ("-" if trivial[g] is None else f"{trivial[g]:.3f}" for g in GROUPS)
        cells.append([f"trivial: {TRIVIAL[task]}", *values])
    title = f"{section} {task}: {METRIC_NAME[task]} of each class, averaged per group ({n_images} val images)"
    return [*table(title, ["run", *heads], cells), "", *verdict_lines(results, section, task)]


def tables(results: dict[str, Any]) -> list[list[str]]:
    """summary.md after its header: settings, then a table per section and task."""
    synth, hw2 = results["settings"]["synth"], results["settings"]["hw2"]
    head = [
        f"- epochs: {', '.join(f'{m} {e}' for m, e in results['settings']['epochs'].items())}; recipe: "
        + ", ".join(f"{k} {v}" for k, v in results["settings"]["recipe"].items()),
        f"- synth: {synth['imgsz']} px, batch {synth['batch']}; hw2: {hw2['imgsz']} px, batch {hw2['batch']}, "
        f"pretrained {results['pretrained'] or 'none'}; both {synth['optimizer']} lr0 {synth['lr0']}, cosine"
        + ("; **quick mode**" if results["quick"] else ""),
        *(f"- section {s} skipped: its data is not there" for s in results["skipped"]),
        "",
        "Runs: old = stage 1 alone; finetune = from old on the stage-2 data, nothing keeping the old classes (lower "
        "bound); recipe = the same with cfg/add-classes.yaml; joint = every class at once (upper bound). Groups: old "
        "= stage-1 classes (seg: background too), new = stage-2 classes, all = every class; the mean of the group's "
        "per-class scores with its 95% bootstrap interval over the val images. A cell gives each seed's "
        "`value [lo, hi]`, and first, in bold, the seeds' mean ± half their range (min-max). Verdicts: seed means.",
    ]
    return [head, *(task_table(results, s, t) for s, tasks in SECTIONS.items() for t in tasks)]


TITLE = "Adding classes to a task: old classes kept, new ones learned"
BENCHMARK = Benchmark(MODULE, KEYS, "benchmarks/results/add-classes", TITLE, run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
