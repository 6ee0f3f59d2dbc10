"""Joint training: one run trains every task of the data YAML, each optimizer step seeing batches of the tasks."""

from yolo_unified.models.unified.joint.diagnostics import DIAGNOSTICS, EpochMeans, plot_diagnostics
from yolo_unified.models.unified.joint.train import JointTrainer, TaskPart, joint_tasks, task_losses
from yolo_unified.models.unified.joint.val import JointValidator, baseline_scores, multitask_fitness, task_metric

__all__ = (
    "DIAGNOSTICS",
    "EpochMeans",
    "JointTrainer",
    "JointValidator",
    "TaskPart",
    "baseline_scores",
    "joint_tasks",
    "multitask_fitness",
    "plot_diagnostics",
    "task_losses",
    "task_metric",
)
