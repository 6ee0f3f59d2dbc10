"""Every task in one run: ``yolo-unified train joint=True`` (cfg/joint.yaml), and resuming such a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, RANK

from yolo_unified.common import PRIMARY_METRIC
from yolo_unified.data.config import load_data_config
from yolo_unified.ddp import rank_zero_alone
from yolo_unified.models.unified.joint import JointTrainer, joint_tasks
from yolo_unified.models.unified.joint.val import task_metric
from yolo_unified.workflows.base import run_dir
from yolo_unified.workflows.knowledge import after_training, command_line, knowledge_of
from yolo_unified.workflows.single import run_args, start_model, train_task


def resumes_joint_run(resume: Any) -> bool:
    """Whether ``resume=`` names the checkpoint of a joint run (its training arguments say ``joint: True``)."""
    if not (isinstance(resume, (str, Path)) and Path(resume).is_file()):
        return False
    return bool(run_args(resume).get("joint"))


def train_joint(task: str | None, keys: dict[str, Any]) -> dict[str, Any]:
    """Train every task of the data YAML (or ``tasks=``) in one run with the joint trainer (a single-task YAML: with
    its task's trainer); returns ``{"weights": best.pt, "save_dirs": {task: run dir}}``."""
    if task is not None:
        raise ValueError(f"joint=True trains every task of the data YAML; task={task} does not go with it")
    if keys.get("stages"):
        raise ValueError("joint=True and a protocol (stages=) do not go together: a protocol's stages name their tasks")
    tasks = joint_tasks(keys.get("tasks"), load_data_config(keys["data"]), keys["data"])
    if len(tasks) == 1:
        why = f"tasks={keys['tasks']} names" if keys.get("tasks") else f"{keys['data']} has"
        LOGGER.warning(
            f"joint=True: {why} {tasks[0]} data only; training {tasks[0]} alone, as task={tasks[0]} does (the "
            "joint keys do not apply)"
        )
        return train_task(tasks[0], {**keys, "joint": False, "tasks": None})
    keys = dict(keys)
    save_dir = run_dir(keys.pop("project", None), keys.pop("name", None), "joint", keys.get("exist_ok"))
    return finished(JointTrainer(overrides={**keys, "save_dir": str(save_dir)}), keys.get("model"), command_line(keys))


def resume_joint(keys: dict[str, Any]) -> dict[str, Any]:
    """Continue the joint run whose ``last.pt`` is ``resume=``, with its own data and settings."""
    return finished(JointTrainer(overrides=keys), start_model(keys), command_line(keys))


def finished(trainer: JointTrainer, start: str | None, command: str) -> dict[str, Any]:
    """Train `trainer` (started from `start`, by `command`); record what the model learned in it; return
    ``{"weights": best.pt (else last.pt), "save_dirs": {task: its run dir}}``."""
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    metrics = trainer.metrics or {}
    scores = {t: float(metrics[k]) for t in trainer.tasks if (k := task_metric(PRIMARY_METRIC[t], t)) in metrics}
    if RANK in {-1, 0} and scores:
        limit = float(trainer.args.forget_limit)
        with rank_zero_alone():  # DDP: it validates while the other ranks are done
            after_training(knowledge_of(start), weights, trainer.args.data, scores, command, limit)
    return {"weights": str(weights), "save_dirs": dict.fromkeys(trainer.tasks, str(trainer.save_dir))}
