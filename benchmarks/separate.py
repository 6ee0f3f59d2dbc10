"""The section ``separate=True`` of benchmarks.hw2: the three separate Ultralytics models a user would otherwise train.

A YOLOv8n detector, Ultralytics' semantic model on the YOLOv8n backbone (cfg/models/yolov8n-sem.yaml) and
YOLOv8n-cls, each trained by Ultralytics' own trainer with the budgets of cfg/baselines.yaml and the same
``pretrained=`` layers 0-8; with them each is trained twice (all layers; layers 0-8 frozen, ``freeze=9``) and the
better run kept. Scored by Ultralytics' own validators with 95% bootstrap intervals.
"""

from __future__ import annotations

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
from benchmarks.common import Run, execute, finished_run, repo_relative, training_minutes, ultralytics_data
from yolo_unified.common import BACKBONE_LAYERS, ULTRALYTICS_TASK
from yolo_unified.data.config import load_data_config
from yolo_unified.defaults import unified_threads
from yolo_unified.files import read_checkpoint
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


def trained_params(model: torch.nn.Module, freeze: int) -> int:
    """Parameters of `model` that training with Ultralytics' ``freeze=<freeze>`` updates (layers from `freeze` on)."""
    return get_num_params(model) - sum(get_num_params(layer) for layer in model.model[:freeze])


def variant_run(task: str, variant: str, data: str, args: dict[str, Any], n_boot: int) -> Run:
    """One run (`variant` of VARIANTS) of the separate model of `task`, scored by its own Ultralytics validator."""
    suffix, extra, label = VARIANTS[variant]
    args, t0 = {**args, **extra}, time.time()

    def score(root: Path, weights: str) -> dict[str, Any]:
        model = YOLO(weights).model
        validator = MODELS[task][1]
        final = bootstrapped(weights, data, task, args["imgsz"], model.names, n_boot, root / "bootstrap", validator)
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {root.name} ({label}) {final['value']:.4f} {final['ci95']}")
        return {
            "weights": repo_relative(weights),
            "params": get_num_params(model),
            "trained_params": trained_params(model, args.get("freeze", 0)),
            "minutes_this_call": (time.time() - t0) / 60,
            "minutes": training_minutes(root),  # from its results.csv, also when this call skipped the training
            "final": final,
        }

    def trained(root: Path) -> str:  # trained, resumed, or skipped when finished
        best, last = root / "weights" / "best.pt", root / "weights" / "last.pt"
        if last.is_file() and not finished_run(last):
            YOLO(str(last)).train(resume=True)
        elif not last.is_file():
            model = YOLO(MODELS[task][0], task=ULTRALYTICS_TASK[task])
            model.train(data=data, project=str(root.parent), name=root.name, exist_ok=True, **args)
        return str(best if best.is_file() else last)

    return Run(task + suffix, trained, score, {"label": label})


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
        runs: dict[str, dict[str, Any]] = {}
        planned = (variant_run(task, v, source, args, n_boot) for v in variants)
        with unified_threads():  # the CPU threads the unified runs it is compared with train on
            execute(planned, out, {}, runs.__setitem__, "benchmarks.separate")
        runs = dict(zip(variants, runs.values(), strict=True))
        kept = max(runs, key=lambda v: runs[v]["final"]["value"])  # the first of equals: the unfrozen run
        results[task] = {"model": Path(MODELS[task][0]).name, **runs[kept], "kept": kept, "runs": runs}
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {task}: kept {runs[kept]['label']}")
    return results
