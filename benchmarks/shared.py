"""Detection and segmentation labelled on the same images (mini_coco): one pass per image against two datasets.

Sections: ``timing`` (seconds per epoch of the two forms, in alternation), ``mini_coco`` (their scores and each task
alone), ``mixed`` (plus Imagenette classification), ``merged`` (HW2 plus mini_coco merged by class name). Every run
is the regime's joint recipe with ``balance`` and every task in every step. Commands: benchmarks/README.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, YAML, colorstr

from benchmarks.common import (
    METRIC_NAME,
    QUICK,
    REPO,
    Benchmark,
    Report,
    execute,
    run_benchmark,
    score_text,
    table,
)
from benchmarks.joint import joint_recipe, task_keys, unified_run
from yolo_unified.cli import coco_names
from yolo_unified.common import listed
from yolo_unified.data.coco import convert_coco
from yolo_unified.data.config import SPLITS, image_files, load_data_config, task_data
from yolo_unified.data.prepare import prepare_hw2
from yolo_unified.models.unified.joint import JointTrainer

MODULE = "benchmarks.shared"
KEYS = {"coco", "hw2", "pretrained", "epochs", "imgsz", "seeds", "balance", "timing_rounds", "timing_epochs",
        "timing_balance", "sections", "n_boot", "quick"}  # fmt: skip
SECTIONS = ("timing", "mini_coco", "mixed", "merged")
DATASETS = REPO / "datasets"


def prepare_data(args: dict[str, Any], folder: Path) -> dict[str, str]:
    """Convert mini_coco (twice: HW2 detection names, VOC names), lay out HW2, and write the benchmark's data YAMLs
    into `folder`; returns their paths by name (shared, two, mixed, hw2, merged)."""
    coco = str(args.get("coco", "../shared/data/mini_coco"))
    hw2 = prepare_hw2(str(args.get("hw2", "../shared/data/hw2")), DATASETS / "hw2")["yaml"]
    folder.mkdir(parents=True, exist_ok=True)
    det = convert_coco(coco, DATASETS / "mini_coco", coco_names("hw2"), folder / "shared.yaml")["yaml"]
    voc = convert_coco(coco, DATASETS / "mini_coco_voc", coco_names("voc"), folder / "mini_coco_voc.yaml")["yaml"]
    shared, hw2_cfg = load_data_config(det), load_data_config(hw2)
    sections = {t: {k: v for k, v in s.items() if k not in {"shared", *SPLITS}} for t, s in shared["tasks"].items()}
    splits = shared["shared"]
    cls = {k: hw2_cfg["tasks"]["cls"][k] for k in ("train", "val", "names")}
    files = {"shared": det, "hw2": hw2}
    for name, content in {
        "two": {t: {**section, **splits} for t, section in sections.items()},
        "mixed": {**splits, **sections, "cls": cls},
        "merged": merged_yaml(hw2_cfg, {"det": shared, "seg": load_data_config(voc)}, folder),
    }.items():
        YAML.save(folder / f"{name}.yaml", content)
        files[name] = str(folder / f"{name}.yaml")
    return files


def merged_yaml(hw2: dict[str, Any], coco: dict[str, dict[str, Any]], folder: Path) -> dict[str, Any]:
    """HW2's det and seg sections with the converted mini_coco training images added by class name: each task's
    training split becomes an image list (``<folder>/merged-<task>-train.txt``; labels and masks are found beside
    each image, as for any split); val stays HW2's. Raises when a task's class names differ."""
    out = {}
    for task, cfg in coco.items():
        section = hw2["tasks"][task]
        if cfg["tasks"][task]["names"] != section["names"]:
            raise ValueError(f"{cfg['yaml_file']}: {task} names differ from HW2's; convert with names= in HW2's order")
        extra = task_data(cfg, task, ("train",))["train"]  # the images with this task's label
        images = image_files(section["train"]) + image_files(extra)
        listing = folder / f"merged-{task}-train.txt"
        listing.write_text("".join(f"{f.resolve()}\n" for f in images))
        out[task] = {**{k: v for k, v in section.items() if k != "train"}, "train": str(listing)}
    return out


def recipe(args: dict[str, Any], force: dict[str, Any]) -> dict[str, Any]:
    """The keys of every run: the regime's joint recipe with this benchmark's balance, epochs, image size and
    every task in every step; `force` (quick mode) wins."""
    cfg = YAML.load(joint_recipe(bool(args.get("pretrained"))))
    cfg.update(balance=args.get("balance", "fixed"), balance_args=None, task_share=None)
    cfg.update(epochs=int(args.get("epochs", 20)), imgsz=int(args.get("imgsz", cfg["imgsz"])))
    if args.get("pretrained"):
        cfg["pretrained"] = str(args["pretrained"])
    return {**cfg, **force}


def epoch_seconds(cfg: dict[str, Any], data: str, save_dir: Path) -> list[float]:
    """Training seconds of each epoch of a joint run of `cfg` on `data` without validation (the run is overwritten)."""
    marks: dict[str, float] = {}
    seconds: list[float] = []
    keys = {**cfg, "data": data, "val": False, "plots": False, "save_dir": str(save_dir), "exist_ok": True}
    trainer = JointTrainer(overrides=keys)
    trainer.add_callback("on_train_epoch_start", lambda _: marks.__setitem__("start", time.perf_counter()))
    trainer.add_callback("on_train_epoch_end", lambda _: seconds.append(time.perf_counter() - marks["start"]))
    trainer.train()
    return seconds


def timing(args: dict[str, Any], cfg: dict[str, Any], data: dict[str, str], out: Path, done: dict) -> dict[str, Any]:
    """The timing section: per method, each form's epoch seconds per round and the ratio two / shared. A method in
    `done` (timed by an earlier invocation into `out`) is kept as recorded."""
    rounds, epochs = int(args.get("timing_rounds", 2)), int(args.get("timing_epochs", 2))
    results = {}
    for method in listed(args.get("timing_balance", "fixed,alignedmtl")):
        if method in done:
            results[method] = done[method]
            continue
        run = {**cfg, "balance": method, "epochs": epochs}
        seconds: dict[str, list[list[float]]] = {"shared": [], "two": []}
        for k in range(rounds):
            for form in seconds:
                LOGGER.info(f"{colorstr('bold', MODULE)}: timing {method} {form}, round {k + 1}/{rounds}")
                seconds[form].append(epoch_seconds(run, data[form], out / "timing" / f"{method}-{form}"))
        pairs = zip(seconds["shared"], seconds["two"], strict=True)
        ratios = [statistics.mean(two) / statistics.mean(shared) for shared, two in pairs]
        results[method] = {"epoch_seconds": seconds, "ratios": ratios, "ratio": statistics.median(ratios)}
    return results


def run_plan(data: dict[str, str], seeds: int, sections: list[str]) -> list[tuple[str, str, dict, dict[str, str]]]:
    """Every scored run: (section, name, keys over the recipe, task -> data YAML it is scored on), seed 0 of every
    section first, so that a cut-short invocation has one of each."""
    plan = []
    for seed in range(seeds):
        runs = {
            "mini_coco": [
                ("shared", {"data": data["shared"]}, {"det": data["shared"], "seg": data["shared"]}),
                ("two", {"data": data["two"]}, {"det": data["shared"], "seg": data["shared"]}),
                ("det_alone", {"data": data["shared"], "task": "det"}, {"det": data["shared"]}),
                ("seg_alone", {"data": data["shared"], "task": "seg"}, {"seg": data["shared"]}),
            ],
            "mixed": [
                ("mixed", {"data": data["mixed"]}, {t: data["mixed"] for t in ("det", "seg", "cls")}),
                ("cls_alone", {"data": data["mixed"], "task": "cls"}, {"cls": data["mixed"]}),
            ],
            "merged": [
                (f"{source}_{task}", {"data": data[source], "task": task}, {task: data["hw2"]})
                for task in ("det", "seg")
                for source in ("hw2", "merged")
            ],
        }
        for section in (s for s in SECTIONS if s in runs and s in sections):
            for name, keys, scoring in runs[section]:
                plan.append((section, f"{name}_seed{seed}", {**keys, "seed": seed}, scoring))
    return plan


def run_keys(cfg: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """The recipe `cfg` with a run's `keys`: a run of one task (``task=``) is a single-task run of the same recipe,
    with the task's own keys of ``task_args`` (classification at its own image size)."""
    own = task_keys(cfg, keys["task"]) if "task" in keys else cfg
    return {**own, **keys, "joint": "task" not in keys}


def run(report: Report) -> None:
    """The timing section, then every scored run of the sections asked for, saved as each is made."""
    args, out, previous, results = report.args, report.out, report.previous, report.results
    sections = listed(args.get("sections", list(SECTIONS)))
    if unknown := set(sections) - set(SECTIONS):
        raise ValueError(f"sections: unknown {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    data = prepare_data(args, out / "data")
    cfg = recipe(args, dict(QUICK) if report.quick else {})
    results.update(
        regime=f"pretrained={cfg['pretrained']}" if cfg.get("pretrained") else "from scratch",
        recipe={k: v for k, v in cfg.items() if k != "pretrained"},
        timing=previous.get("timing", {}),
        runs={},
    )
    if "timing" in sections:
        results["timing"] = timing(args, cfg, data, out, previous.get("timing", {}))
        report.save()
    n_boot = int(args.get("n_boot", 1000))
    plan = run_plan(data, int(args.get("seeds", 2)), sections)
    runs = (
        unified_run(name, run_keys(cfg, keys), scoring, n_boot, {"section": section, "task": keys.get("task", "joint"),
                                                                 "seed": keys["seed"]})
        for section, name, keys, scoring in plan
    )  # fmt: skip
    execute(runs, out, previous.get("runs", {}), report.keep, MODULE)


def timing_table(timing: dict[str, Any]) -> list[str]:
    """The timing section: each method's epoch seconds per form and round, and the ratio."""

    def rounds(seconds: list[list[float]]) -> str:
        return "; ".join(", ".join(f"{s:.1f}" for s in r) for r in seconds)

    rows = [
        [method, rounds(t["epoch_seconds"]["shared"]), rounds(t["epoch_seconds"]["two"]),
         ", ".join(f"{r:.2f}x" for r in t["ratios"]), f"**{t['ratio']:.2f}x**"]
        for method, t in timing.items()
    ]  # fmt: skip
    columns = ["balance", "shared: s/epoch per round", "two datasets: s/epoch per round", "two / shared per round"]
    return table("Seconds per epoch: shared images against two datasets", [*columns, "median"], rows) if rows else []


def runs_table(results: dict[str, Any], section: str, title: str, tasks: tuple[str, ...]) -> list[str]:
    """One section's runs: each task's score with its 95% interval, seconds per epoch and peak memory."""
    runs = {n: r for n, r in results["runs"].items() if r["section"] == section}
    if not runs:
        return []
    rows = ([name, *(score_text(r["final"].get(t)) for t in tasks), f"{r['seconds_per_epoch']:.1f}",
             f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "n/a"] for name, r in runs.items())  # fmt: skip
    lines = table(title, ["run", *(f"{t} {METRIC_NAME[t]}" for t in tasks), "s/epoch", "peak MB"], rows)
    if background := {f"{r['final']['seg']['all_background']:.4f}" for r in runs.values() if "seg" in r["final"]}:
        lines += ["", f"All-background prediction (the trivial one): seg mIoU {', '.join(sorted(background))}."]
    return lines


def tables(results: dict[str, Any]) -> list[list[str]]:
    """summary.md after its header: the recipe, the timing table and one score table per section."""
    r = results["recipe"]
    recipe_line = (f"- regime: {results['regime']}; recipe: balance {r['balance']}, {r['epochs']} epochs, imgsz "
                   f"{r['imgsz']}, batch {r['batch']}")  # fmt: skip
    return [
        [recipe_line],
        timing_table(results["timing"]),
        runs_table(results, "mini_coco", "mini_coco val (60 images): joint on shared images, two datasets, alone",
                   ("det", "seg")),
        runs_table(results, "mixed", "Mixed: mini_coco det+seg shared, Imagenette cls", ("det", "seg", "cls")),
        runs_table(results, "merged", "HW2 val: HW2 alone against HW2 + mini_coco's training images", ("det", "seg")),
    ]  # fmt: skip


TITLE = "mini_coco: tasks labelled on the same images"
BENCHMARK = Benchmark(MODULE, KEYS, "benchmarks/results/mini-coco", TITLE, run, tables)
main = partial(run_benchmark, BENCHMARK)

if __name__ == "__main__":
    main(sys.argv[1:])
