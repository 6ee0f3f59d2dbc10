"""Joint training's validation: every task's unified validator in turn, metrics named per task, one fitness."""

from __future__ import annotations

from copy import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.engine.validator import BaseValidator

from yolo_unified.common import PRIMARY_METRIC, STATE_FILE
from yolo_unified.data.sampling import JointLoader, TaskSampler
from yolo_unified.files import read_json


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


def task_trainer(trainer: BaseTrainer, task: str, data: dict[str, Any]) -> BaseTrainer:
    """The joint run's trainer as one task's Ultralytics validator reads it during training
    (``BaseValidator.__call__``): a shallow copy with the task's ``data`` and ``loss_items``, zeros named as the
    task's items among the run's ``loss_names`` (``det/box_loss``: ``box_loss``), which the validator sums its losses
    into copies of."""
    view = copy(trainer)
    names = [name.partition("/")[2] for name in trainer.loss_names if name.startswith(f"{task}/")]
    view.data, view.loss_items = data, dict.fromkeys(names, torch.zeros((), device=trainer.device))
    return view


class JointValidator:
    """Every task's unified validator, one after the other: metrics and losses named per task, one fitness
    (`multitask_fitness` of the primary metrics, relative to `baselines` when given). ``metrics.keys``, ``args`` and
    ``dataloader`` are what Ultralytics' trainer reads and sets on a validator."""

    def __init__(
        self,
        validators: dict[str, BaseValidator],
        data: dict[str, dict[str, Any]],
        args: SimpleNamespace,
        baselines: dict[str, float] | None,
    ) -> None:
        """Validate each task with `validators[task]` on `data[task]`."""
        self.validators, self.data = validators, data
        self.args, self.baselines = args, baselines
        keys = [task_metric(k, t) for t, v in self.validators.items() for k in v.metrics.keys]
        self.metrics = SimpleNamespace(keys=keys)

    @property
    def dataloader(self) -> JointLoader:
        """Every task's val loader, as one loader."""
        loaders = {task: validator.dataloader for task, validator in self.validators.items()}
        return JointLoader(loaders, TaskSampler({task: len(loader.dataset) for task, loader in loaders.items()}))

    @dataloader.setter
    def dataloader(self, loader: JointLoader) -> None:
        """Hand each task's val loader of `loader` to its validator (Ultralytics' out-of-memory retry rebuilds them)."""
        for task, validator in self.validators.items():
            validator.dataloader = loader.loaders[task]

    def __call__(self, trainer: BaseTrainer | None = None, model: str | Path | None = None) -> dict[str, float] | None:
        """Validate the training EMA (`trainer`, the joint run's) or a checkpoint (`model`) on every task; fitness
        under ``fitness`` (None on DDP ranks other than 0, which validate their share of each task's images)."""
        results, scores, has_metrics = {}, {}, True
        for task, validator in self.validators.items():
            if trainer is None:
                validator.args.plots = self.args.plots
                stats = validator(model=model)
            else:
                stats = validator(trainer=task_trainer(trainer, task, self.data[task]))
            if stats is None:  # DDP: a rank other than 0 validated its share, rank 0 has the metrics
                has_metrics = False
                continue
            stats.pop("fitness", None)
            scores[task] = stats[PRIMARY_METRIC[task]]
            results.update({task_metric(k, task): v for k, v in stats.items()})
        return {**results, "fitness": multitask_fitness(scores, self.baselines)} if has_metrics else None
