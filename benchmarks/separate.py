"""The three separate Ultralytics models a user would otherwise train, on the data of a multi-task YAML.

    python -m benchmarks.separate data=datasets/hw2.yaml imgsz=320 out=benchmarks/results/hw2-separate \
        [pretrained=../shared/weights/yolov8n-cls-imagenette.pt] [quick=True]

A YOLOv8n detector (``yolov8n.yaml``), Ultralytics' semantic segmentation model on the YOLOv8n backbone
(``cfg/models/yolov8n-sem.yaml``: Ultralytics 8.4.190 ships only a YOLO26 one, into which a YOLOv8n checkpoint
transfers few tensors) and YOLOv8n-cls (``yolov8n-cls.yaml``), each trained by Ultralytics' own trainer with the
budget of the unified single-task baselines (cfg/baselines.yaml: epochs, image size, optimizer and learning rate per
task) and the same ``pretrained=`` weights (a YOLOv8n or YOLOv8n-cls checkpoint fills layers 0-8 of all three; of a
classification checkpoint only those layers are used, so the classifier, like the unified model, starts without the
checkpoint's own classification head). Each is scored by Ultralytics' own validator with a 95% bootstrap interval
over the val images. A re-run with the same command skips finished models and resumes an interrupted one.
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
from benchmarks.common import QUICK, benchmark_args, finished_run, training_minutes, ultralytics_data
from yolo_unified.common import BACKBONE_LAYERS, ULTRALYTICS_TASK
from yolo_unified.data.config import load_data_config
from yolo_unified.nn.tasks import CFG_DIR

MODELS = {  # task -> (model YAML, Ultralytics validator)
    "seg": (str(CFG_DIR / "models" / "yolov8n-sem.yaml"), SemanticSegmentationValidator),
    "det": ("yolov8n.yaml", DetectionValidator),
    "cls": ("yolov8n-cls.yaml", ClassificationValidator),
}
STAGE_KEYS = ("epochs", "imgsz", "lr0", "lrf", "batch")  # a baselines stage's keys that the separate model gets too


def backbone_weights(pretrained: str, out: Path) -> str:
    """`pretrained` as the separate models load it: a classification checkpoint cut to layers 0-8 (saved in `out`),
    any other checkpoint unchanged."""
    ckpt = torch.load(pretrained, map_location="cpu", weights_only=False)
    model = ckpt.get("ema") or ckpt["model"]
    if not isinstance(model, ClassificationModel):
        return pretrained
    model = deepcopy(model).float()
    model.model = model.model[: BACKBONE_LAYERS - 1]  # YOLOv8n-cls: layers 0-8 are YOLOv8n's, layer 9 its Classify head
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"{Path(pretrained).stem}-layers0-8.pt"
    torch.save({"model": model}, file)
    return str(file)


def train_one(task: str, data: str, args: dict[str, Any], out: Path) -> str:
    """Train (or resume, or skip when finished) the separate model of `task` in ``out/<task>``; return its best.pt."""
    best, last = out / task / "weights" / "best.pt", out / task / "weights" / "last.pt"
    if finished_run(last):
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {task} already trained, skipping")
    elif last.is_file():
        YOLO(str(last)).train(resume=True)
    else:
        model = YOLO(MODELS[task][0], task=ULTRALYTICS_TASK[task])
        model.train(data=data, project=str(out), name=task, exist_ok=True, **args)
    return str(best if best.is_file() else last)


def train_separate(
    data: str, out: Path, settings: dict[str, Any], force: dict[str, Any] | None = None, n_boot: int = 1000
) -> dict[str, dict[str, Any]]:
    """Train and score the separate Ultralytics model of every task of `data` (budgets of cfg/baselines.yaml).

    `settings` holds ``imgsz`` and optionally ``pretrained``; `force` keys win over every stage's (quick mode). Returns
    per task: weights, parameters, training minutes and the bootstrapped score.
    """
    if settings.get("pretrained"):
        settings = {**settings, "pretrained": backbone_weights(settings["pretrained"], out)}
    baselines = YAML.load(CFG_DIR / "baselines.yaml")
    top = {k: v for k, v in baselines.items() if k not in {"stages", "chain"}}
    tasks = load_data_config(data)["tasks"]
    results = {}
    for stage in (s for s in baselines["stages"] if s["task"] in tasks):
        task = stage["task"]
        args = {**top, **settings, **{k: stage[k] for k in STAGE_KEYS if k in stage}, **(force or {})}
        t0 = time.time()
        weights = train_one(task, ultralytics_data(data, task, out), args, out)
        model = YOLO(weights).model
        validator = MODELS[task][1]
        score = bootstrapped(
            weights, ultralytics_data(data, task, out), task, args["imgsz"], model.names, n_boot,
            out / "bootstrap" / task, validator,
        )  # fmt: skip
        results[task] = {
            "model": Path(MODELS[task][0]).name,
            "weights": weights,
            "params": get_num_params(model),
            "minutes_this_call": (time.time() - t0) / 60,
            "minutes": training_minutes(out / task),  # from its results.csv, also when this call skipped the training
            "final": score,
        }
        LOGGER.info(f"{colorstr('benchmarks.separate:')} {task} {score['value']:.4f} {score['ci95']}")
    return results


def main(argv: list[str]) -> dict[str, dict[str, Any]]:
    """Train and score the separate models for command-line tokens `argv` (``key=value``)."""
    keys = {"data", "imgsz", "pretrained", "out", "quick", "bootstrap"}
    args = benchmark_args(argv, keys, "benchmarks.separate")
    settings = {"imgsz": int(args.get("imgsz", 320))}
    if args.get("pretrained"):
        settings["pretrained"] = str(args["pretrained"])
    quick = bool(args.get("quick", False))
    force = dict(QUICK) if quick else None
    out = Path(args.get("out", "runs/unified/separate")).resolve()
    n_boot = int(args.get("bootstrap", 50 if quick else 1000))
    return train_separate(str(args.get("data", "datasets/hw2.yaml")), out, settings, force, n_boot)


if __name__ == "__main__":
    main(sys.argv[1:])
