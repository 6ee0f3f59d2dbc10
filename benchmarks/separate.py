"""The three separate Ultralytics models a user would otherwise train, on the data of a multi-task YAML.

    python -m benchmarks.separate data=datasets/hw2.yaml imgsz=320 out=benchmarks/results/hw2-separate \
        [pretrained=../shared/weights/yolov8n-cls-imagenette.pt] [quick=True]

A YOLOv8n detector (``yolov8n.yaml``), Ultralytics' semantic segmentation model on the YOLOv8n backbone
(``cfg/models/yolov8n-sem.yaml``: Ultralytics 8.4.190 ships only a YOLO26 one, into which a YOLOv8n checkpoint
transfers few tensors) and YOLOv8n-cls (``yolov8n-cls.yaml``), each trained by Ultralytics' own trainer with the
budget of the unified single-task baselines (cfg/baselines.yaml: epochs, image size, optimizer and learning rate per
task) and the same ``pretrained=`` weights (a YOLOv8n or YOLOv8n-cls checkpoint fills layers 0-8 of all three; of a
classification checkpoint only those layers are used, so the classifier, like the unified model, starts without the
checkpoint's own classification head). With ``pretrained=`` each is trained twice: all layers (``<out>/<task>``), and
with the pretrained layers 0-8 frozen (Ultralytics' ``freeze=9``, ``<out>/<task>-freeze``), the like of the unified
model, whose pretrained backbone learns at a tenth of the rate (cfg/seq-pretrained.yaml); the run with the better
primary metric (mIoU, mAP50, top-1; a tie keeps the unfrozen one) is the task's result, ``kept`` names it and ``runs``
holds both. Each run is scored by Ultralytics' own validator with a 95% bootstrap interval over the val images. A
re-run with the same command skips finished runs and resumes an interrupted one. Standalone, the results are also
written to ``<out>/results.json``.
"""

from __future__ import annotations

import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO
from ultralytics.models.yolo.classify import ClassificationValidator
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.semantic import SemanticSegmentationValidator
from ultralytics.nn.tasks import ClassificationModel
from ultralytics.utils import LOGGER, YAML, colorstr
from ultralytics.utils.torch_utils import get_num_params

from benchmarks.bootstrap import bootstrapped
from benchmarks.common import QUICK, benchmark_args, finished_run, repo_relative, training_minutes, ultralytics_data
from yolo_unified.common import BACKBONE_LAYERS, ULTRALYTICS_TASK
from yolo_unified.data.config import load_data_config
from yolo_unified.defaults import unified_threads
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.nn.tasks import CFG_DIR

MODELS = {  # task -> (model YAML, Ultralytics validator)
    "seg": (str(CFG_DIR / "models" / "yolov8n-sem.yaml"), SemanticSegmentationValidator),
    "det": ("yolov8n.yaml", DetectionValidator),
    "cls": ("yolov8n-cls.yaml", ClassificationValidator),
}
STAGE_KEYS = ("epochs", "imgsz", "lr0", "lrf", "batch")  # a baselines stage's keys that the separate model gets too
FROZEN = BACKBONE_LAYERS - 1  # the layers a pretrained checkpoint fills (0-8): freeze=9 holds them all
VARIANTS = {  # run -> (run folder suffix, extra train args, label); "frozen" only with pretrained weights
    "trained": ("", {}, "all layers trained"),
    "frozen": ("-freeze", {"freeze": FROZEN}, f"pretrained layers 0-{FROZEN - 1} frozen (freeze={FROZEN})"),
}


def backbone_weights(pretrained: str, out: Path) -> str:
    """`pretrained` as the separate models load it: a classification checkpoint cut to layers 0-8 (saved in `out`),
    any other checkpoint unchanged."""
    ckpt = read_checkpoint(pretrained)
    model = ckpt.get("ema") or ckpt["model"]
    if not isinstance(model, ClassificationModel):
        return pretrained
    model = deepcopy(model).float()
    model.model = model.model[:FROZEN]  # YOLOv8n-cls: layers 0-8 are YOLOv8n's, layer 9 its Classify head
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"{Path(pretrained).stem}-layers0-8.pt"
    torch.save({"model": model}, file)
    return str(file)


def train_one(task: str, name: str, data: str, args: dict[str, Any], out: Path) -> str:
    """Train (or resume, or skip when finished) the separate model of `task` in ``out/<name>``; return its best.pt."""
    best, last = out / name / "weights" / "best.pt", out / name / "weights" / "last.pt"
    if finished_run(last):
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {name} already trained, skipping")
    elif last.is_file():
        YOLO(str(last)).train(resume=True)
    else:
        model = YOLO(MODELS[task][0], task=ULTRALYTICS_TASK[task])
        model.train(data=data, project=str(out), name=name, exist_ok=True, **args)
    return str(best if best.is_file() else last)


def trained_params(model: torch.nn.Module, freeze: int) -> int:
    """Parameters of `model` that training with Ultralytics' ``freeze=<freeze>`` updates (layers from `freeze` on)."""
    return get_num_params(model) - sum(get_num_params(layer) for layer in model.model[:freeze])


def train_variant(task: str, variant: str, data: str, args: dict[str, Any], out: Path, n_boot: int) -> dict[str, Any]:
    """Train and score one run (`variant` of VARIANTS) of the separate model of `task`: its record."""
    suffix, extra, label = VARIANTS[variant]
    name, args = task + suffix, {**args, **extra}
    t0 = time.time()
    weights = train_one(task, name, data, args, out)
    model = YOLO(weights).model
    score = bootstrapped(
        weights, data, task, args["imgsz"], model.names, n_boot, out / "bootstrap" / name, MODELS[task][1]
    )
    LOGGER.info(f"{colorstr('benchmarks.separate:')} {name} ({label}) {score['value']:.4f} {score['ci95']}")
    return {
        "label": label,
        "weights": repo_relative(weights),
        "params": get_num_params(model),
        "trained_params": trained_params(model, args.get("freeze", 0)),
        "minutes_this_call": (time.time() - t0) / 60,
        "minutes": training_minutes(out / name),  # from its results.csv, also when this call skipped the training
        "final": score,
    }


def train_separate(
    data: str, out: Path, settings: dict[str, Any], force: dict[str, Any] | None = None, n_boot: int = 1000
) -> dict[str, dict[str, Any]]:
    """Train and score the separate Ultralytics model of every task of `data` (budgets of cfg/baselines.yaml).

    `settings` holds ``imgsz`` and optionally ``pretrained`` (then also a run with the pretrained layers frozen);
    `force` keys win over every stage's (quick mode). Returns per task: the model, ``runs`` (each run's weights,
    parameters, training minutes and bootstrapped score), ``kept`` (the better run) and the kept run's entries.
    """
    variants = ["trained"]
    if settings.get("pretrained"):
        settings = {**settings, "pretrained": backbone_weights(settings["pretrained"], out)}
        variants.append("frozen")
    baselines = YAML.load(CFG_DIR / "baselines.yaml")
    top = {k: v for k, v in baselines.items() if k not in {"stages", "chain"}}
    tasks = load_data_config(data)["tasks"]
    results = {}
    for stage in (s for s in baselines["stages"] if s["task"] in tasks):
        task = stage["task"]
        args = {**top, **settings, **{k: stage[k] for k in STAGE_KEYS if k in stage}, **(force or {})}
        source = ultralytics_data(data, task, out)  # as Ultralytics reads it
        with unified_threads():  # the CPU threads the unified runs it is compared with train on
            runs = {v: train_variant(task, v, source, args, out, n_boot) for v in variants}
        kept = max(runs, key=lambda v: runs[v]["final"]["value"])  # the first of equals: the unfrozen run
        results[task] = {"model": Path(MODELS[task][0]).name, **runs[kept], "kept": kept, "runs": runs}
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {task}: kept {runs[kept]['label']}")
    return results


def main(argv: list[str]) -> dict[str, dict[str, Any]]:
    """Train and score the separate models for command-line tokens `argv` (``key=value``); also write them to
    ``<out>/results.json``."""
    keys = {"data", "imgsz", "pretrained", "out", "quick", "bootstrap"}
    args = benchmark_args(argv, keys, "benchmarks.separate")
    settings = {"imgsz": int(args.get("imgsz", 320))}
    if args.get("pretrained"):
        settings["pretrained"] = str(args["pretrained"])
    quick = bool(args.get("quick", False))
    force = dict(QUICK) if quick else None
    out = Path(args.get("out", "runs/unified/separate")).resolve()
    n_boot = int(args.get("bootstrap", 50 if quick else 1000))
    results = train_separate(str(args.get("data", "datasets/hw2.yaml")), out, settings, force, n_boot)
    save_atomically(results, out / "results.json")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
