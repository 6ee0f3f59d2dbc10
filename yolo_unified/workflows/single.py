"""One task, one run: ``yolo-unified train task=seg|det|cls``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, RANK

from yolo_unified.common import PRIMARY_METRIC, TASKS, ULTRALYTICS_TASK
from yolo_unified.continual import StageContext
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.ddp import rank_zero_alone
from yolo_unified.files import read_checkpoint
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.workflows.base import protect_keys, protect_recipe, run_dir, save_memory, stage_memory
from yolo_unified.workflows.knowledge import (
    after_training,
    command_line,
    knowledge_of,
    known_classes,
    recorded_scores,
    recorded_tasks,
    unrecorded_tasks,
    warn_unprotected,
)


def train_task(task: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Train one task with its unified trainer (``resume=`` a last.pt: in that run's folder); return ``{"weights":
    best.pt, "save_dirs": {task: run dir}}``. The strategies read the memory in the start checkpoint and store theirs
    in the run's best.pt."""
    if task not in TASKS:
        raise ValueError(f"task='{task}' is not a yolo-unified task; use one of {list(TASKS)} (or omit it)")
    keys = dict(keys)
    save_dir = run_dir(keys.pop("project", None), keys.pop("name", None), "train", keys.get("exist_ok", False))
    start = start_model(keys)
    context = StageContext(index=0, task=task, memory=stage_memory(start))
    given, before = dict(keys), knowledge_of(start)
    known = recorded_tasks(before, [task])
    added, unlabelled = class_coverage(before, task, keys["data"])
    recipe = protect_recipe() if keys.get("protect", True) else {}
    kept = bool((known or added) and recipe)
    if kept:
        keys = protected(before, known, added, start, recipe, keys, context)
    elif known or added:
        warn_unprotected(kept_groups(before, known, task, added))
    if unlabelled and not added:
        LOGGER.warning(
            f"{keys['data']} labels {task} classes the model knows but not {', '.join(unlabelled)}: this run trains "
            "them as background and does not keep them (old classes are kept only by data that adds new ones)"
        )
    if recipe and not keys.get("resume"):  # what later runs from this model will keep it by
        keys = {**recipe["store"], **keys}
    if unrecorded := [t for t in unrecorded_tasks(start, before) if t != task]:
        frozen = ", ".join(["backbone: 0", "neck: 0", "tower: 0", *(f"{t}: 0" for t in unrecorded)])
        LOGGER.warning(
            f"model={start} learned {', '.join(unrecorded)} before yolo-unified kept a record of what a model learned:"
            " this run neither keeps nor scores it. To keep it exactly, freeze the shared network: "
            f'lr_mult="{{{frozen}}}"'
        )
    overrides = keys if keys.get("resume") else {**keys, "save_dir": str(save_dir)}
    trainer = TRAINERS[task](overrides=overrides, context=context)
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    if context.memory and RANK in {-1, 0}:
        save_memory(context.memory, weights)
    if RANK in {-1, 0} and (score := (trainer.metrics or {}).get(PRIMARY_METRIC[task])) is not None:
        command, limit = command_line({"task": task, **given}), float(trainer.args.forget_limit)
        with rank_zero_alone():  # DDP: it validates while the other ranks are done
            after_training(before, weights, trainer.args.data, {task: float(score)}, command, limit, kept)
    return {"weights": str(weights), "save_dirs": {task: str(trainer.save_dir)}}


def class_coverage(before: dict[str, Any], task: str, data: str) -> tuple[list[str], list[str]]:
    """Where the model's record `before` knows `task`: the `task` classes of `data` it learned none of (added), and
    the ones it learned that `data` does not label (unlabelled, where `data` has `task`); both empty otherwise."""
    learned = known_classes(before, task)
    names = list(task_names(load_data_config(data)).get(task, {}).values())
    if not learned or not names:
        return [], []
    return [n for n in names if n not in learned], sorted(learned - set(names))


def kept_groups(before: dict[str, Any], known: list[str], task: str, added: list[str]) -> list[str]:
    """What a run protects, as logs name it: the other tasks, and `task`'s classes where the data adds `added`."""
    return [*known, *([f"{task} {', '.join(sorted(known_classes(before, task)))}"] if added else [])]


def protected(
    before: dict[str, Any],
    known: list[str],
    added: list[str],
    start: str,
    recipe: dict[str, Any],
    keys: dict[str, Any],
    context: StageContext,
) -> dict[str, Any]:
    """The keys of a one-task run from a model whose record is `before`: cfg/protect.yaml's under the given ones,
    those of ``tasks:`` for the other tasks it knows (`known`: their heads held, `context` made that of a later stage:
    those tasks finished, their scores, the start model as the teacher), those of ``classes:`` where the data adds
    classes to the run's task (`added`)."""
    context.previous, context.prev_weights = known, start
    context.own_scores = recorded_scores(before, known)
    what = ", ".join(kept_groups(before, known, context.task, added))
    LOGGER.info(f"protect: keeping {what} (cfg/protect.yaml; protect=False for a plain fine-tune)")
    return protect_keys(recipe, known, keys, bool(added))


def start_model(keys: dict[str, Any]) -> str | None:
    """The checkpoint a run starts from: ``model=``, or the ``model=`` that a resumed run's checkpoint records."""
    resume = keys.get("resume")
    if not resume:
        return keys.get("model")
    last = resume if isinstance(resume, (str, Path)) else keys.get("model")
    return run_args(last).get("model") if last and Path(last).is_file() else None


def run_args(weights: str | Path) -> dict[str, Any]:
    """The training arguments a checkpoint records (empty for weights without them)."""
    return read_checkpoint(weights).get("train_args") or {}


def resumed_task(resume: Any) -> str | None:
    """The task of the single-task run whose checkpoint ``resume=`` names; None for anything else."""
    if not (isinstance(resume, (str, Path)) and str(resume).endswith(".pt") and Path(resume).is_file()):
        return None
    args = run_args(resume)
    ours = {ultralytics: task for task, ultralytics in ULTRALYTICS_TASK.items()}
    return None if args.get("joint") else ours.get(args.get("task"))
