"""Orchestration: what ``yolo-unified train`` runs, one named entry point per kind of run (`train_task`,
`train_joint` / `resume_joint`, `train_protocol` / `resume_protocol`); `train` picks one from the keys."""

from __future__ import annotations

from typing import Any

from yolo_unified.ddp import cpu_workers, init_cpu_group
from yolo_unified.workflows.base import with_default_data
from yolo_unified.workflows.joint import resume_joint, resumes_joint_run, train_joint
from yolo_unified.workflows.protocol import resume_protocol, resumes_protocol, train_protocol
from yolo_unified.workflows.single import resumed_task, train_task


def train(task: str | None = None, force: dict[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
    """Train as `keys` say: resume a protocol folder or a joint or single-task checkpoint, else a joint run
    (``joint=True``), one task (``task=``) or a protocol (``stages=``, else the recommended one). `force` keys win
    over a stage's own; without ``data=`` the built-in data and cfg/synth.yaml join. Returns the entry point's dict."""
    force = {k: v for k, v in (force or {}).items() if v is not None}
    task = force.pop("task", task)
    given = {k: v for k, v in {**keys, **force}.items() if v is not None}
    if cpu_workers(given.get("device")):  # started by torchrun with device=cpu: DDP over gloo (yolo_unified.ddp)
        init_cpu_group()
    resume = given.get("resume")
    if resumes_protocol(resume):
        return resume_protocol(resume, {k: v for k, v in given.items() if k != "resume"})
    if resume and (given.get("joint") or resumes_joint_run(resume)):
        return resume_joint(given)
    if resume and (resumed := task or resumed_task(resume)):
        return train_task(resumed, given)
    keys, force = with_default_data(given, force)
    if keys.get("joint"):
        return train_joint(task, keys)
    if task is not None and not keys.get("stages"):
        return train_task(task, keys)
    if task is not None:
        raise ValueError(f"task={task} and a protocol (stages=) do not go together: each stage names its task")
    return train_protocol(keys, force, given)


__all__ = ("resume_joint", "resume_protocol", "train", "train_joint", "train_protocol", "train_task")
