"""Joint training's validation: every task's unified validator in turn, metrics named per task, one fitness."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from yolo_unified.common import PRIMARY_METRIC, STATE_FILE
from yolo_unified.files import read_json

if TYPE_CHECKING:
    from yolo_unified.models.unified.joint.train import JointTrainer, TaskPart


def task_metric(key: str, task: str) -> str:
    """An Ultralytics metric or loss name with the task after its group: ``metrics/mIoU`` -> ``metrics/seg/mIoU``."""
    group, _, name = key.partition("/")
    return f"{group}/{task}/{name}"


def multitask_fitness(scores: dict[str, float], baselines: dict[str, float] | None = None) -> float:
    """Mean over tasks of the primary metric, each divided by its single-task score when `baselines` are given."""
    return float(np.mean([s / baselines[t] if baselines else s for t, s in scores.items()]))


def baseline_scores(baselines: str | Path, tasks: list[str]) -> dict[str, float]:
    """Each task's single-task score from a baselines run (the ``protocol.json`` of a ``chain: False`` protocol)."""
    file = Path(baselines) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"baselines={baselines}: no {STATE_FILE} there (give the folder of a baselines run)")
    state = read_json(file)
    if state.get("config", {}).get("chain", True):
        raise ValueError(f"baselines={baselines} is a chained protocol, not single-task baselines (chain: False)")
    scores = {s["task"]: float(s["own_score"]) for s in state["stages"]}
    if bad := [t for t in tasks if not scores.get(t)]:
        raise ValueError(f"baselines={baselines}: no non-zero single-task score for {', '.join(bad)} in {file}")
    return {t: scores[t] for t in tasks}


def training_view(trainer: JointTrainer, part: TaskPart) -> SimpleNamespace:
    """What Ultralytics' validator reads from the trainer it validates during training (``BaseValidator.__call__``),
    for one task of a joint run.

    The run's: ``ema`` (the model validated), ``device``, ``amp``, ``stopper`` and ``epoch``/``epochs`` (whether to
    plot), ``world_size`` and ``label_loss_items`` (the validation losses' names). The task's: ``data`` and
    ``loss_items`` (zeros named as its loss items, which the validator sums its losses into copies of).
    """
    return SimpleNamespace(
        ema=trainer.ema,
        device=trainer.device,
        amp=trainer.amp,
        stopper=trainer.stopper,
        epoch=trainer.epoch,
        epochs=trainer.epochs,
        world_size=trainer.world_size,
        label_loss_items=trainer.label_loss_items,
        data=part.data,
        loss_items=dict.fromkeys(part.loss_names, torch.zeros((), device=trainer.device)),
    )


class JointValidator:
    """Every task's unified validator, one after the other: metrics and losses named per task, one fitness.

    The fitness is `multitask_fitness` of the primary metrics (``common.PRIMARY_METRIC``), relative to the
    single-task scores when `baselines` holds them. ``metrics.keys`` and ``args`` are what Ultralytics' trainer
    reads from a validator; ``args.plots`` is handed to every task's validator for a standalone run.
    """

    def __init__(self, parts: dict[str, TaskPart], args: SimpleNamespace, baselines: dict[str, float] | None) -> None:
        """One validator per part, on its own val loader and in its own folder."""
        self.parts = parts
        self.validators = {task: part.get_validator() for task, part in parts.items()}
        self.args, self.baselines = args, baselines
        keys = [task_metric(k, t) for t, v in self.validators.items() for k in v.metrics.keys]
        self.metrics = SimpleNamespace(keys=keys)

    def __call__(self, trainer: JointTrainer | None = None, model: str | Path | None = None) -> dict[str, float] | None:
        """Validate the training EMA (`trainer`) or a checkpoint (`model`) on every task; fitness under ``fitness``
        (None on DDP ranks other than 0, which validate their share of each task's images)."""
        results, scores, has_metrics = {}, {}, True
        for task, validator in self.validators.items():
            if trainer is None:
                validator.args.plots = self.args.plots
                stats = validator(model=model)
            else:
                stats = validator(trainer=training_view(trainer, self.parts[task]))
            if stats is None:  # DDP: a rank other than 0 validated its share, rank 0 has the metrics
                has_metrics = False
                continue
            stats.pop("fitness", None)
            scores[task] = stats[PRIMARY_METRIC[task]]
            results.update({task_metric(k, task): v for k, v in stats.items()})
        return {**results, "fitness": multitask_fitness(scores, self.baselines)} if has_metrics else None
