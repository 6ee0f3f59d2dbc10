"""The sequential protocol: one Ultralytics training run per stage, evaluation of every learned task in between."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from ultralytics.utils import LOGGER, RANK, colorstr

from yolo_unified.continual.base import StageContext
from yolo_unified.continual.report import own_scores, stage_tasks, write_report
from yolo_unified.ddp import rank_zero_alone, same_on_every_rank, wait_for_rank_zero
from yolo_unified.nn.modules import TASKS

STATE_FILE = "protocol.json"
MEMORY_FILE = "memory.pt"  # the strategies' memory, beside each stage's best.pt (deployable weights stay plain)


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save (or JSON for dicts bound for .json) to a temporary file, then move it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def memory_file(weights: str | Path) -> Path:
    """Where the strategies' memory of a stage's checkpoint is kept: ``memory.pt`` beside it."""
    return Path(weights).with_name(MEMORY_FILE)


def stage_memory(weights: str | None) -> dict[str, Any]:
    """The strategies' memory of a finished stage, found by its checkpoint (empty for a plain one or a model YAML).

    It is read from ``memory.pt`` beside the checkpoint, else from the checkpoint's ``continual`` key, where runs made
    before ``memory.pt`` existed keep it.
    """
    if not weights or Path(weights).suffix != ".pt" or not Path(weights).is_file():
        return {}
    if (file := memory_file(weights)).is_file():
        return torch.load(file, map_location="cpu", weights_only=False)
    return torch.load(weights, map_location="cpu", weights_only=False).get("continual") or {}


def check_stage_tasks(stage: dict[str, Any], i: int) -> None:
    """A stage names one task (``task: seg``) or, for a joint stage, several (``tasks: [seg, det]``); else an error."""
    if ("task" in stage) == ("tasks" in stage):
        raise ValueError(f"stage {i + 1}: give either task (one of {list(TASKS)}) or tasks (a list of them), not both")
    tasks = stage["tasks"] if "tasks" in stage else [stage["task"]]
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) < len(tasks):
        key = "tasks" if "tasks" in stage else "task"
        raise ValueError(f"stage {i + 1}: {key} must name distinct tasks of {list(TASKS)}, got {stage[key]!r}")


class Protocol:
    """Run ``stages`` (dicts with ``task`` or ``tasks`` and any train/strategy keys) in order, resumably, in ``root``.

    Each stage is a unified trainer of its task, started from the previous stage's best weights (``chain=True``) or
    from the initial model (``chain=False``: independent single-task baselines with the same budgets). A stage with
    ``tasks: [seg, det]`` in place of ``task`` is a joint stage: the joint trainer learns those tasks together
    (``joint: True`` with its ``tasks``; every joint key applies), and each of them counts as finished after it.
    After each stage every task learned so far is validated on its val set at its own stage's image size; the scores
    and weights are recorded in ``protocol.json``, which also keeps the protocol's settings (key ``config``), from
    which ``resume`` continues. The strategies' memory (EWC Fisher and anchors, replay images) goes to ``memory.pt``
    beside the stage's ``best.pt`` (`stage_memory` reads it), so every ``best.pt`` is a plain Ultralytics checkpoint.
    A stage that keeps no weights keeps no memory either: the next one continues from the previous weights and their
    memory.
    The final model, ``<root>/weights/best.pt``, records the largest image size of the stages as its own (what
    predict and export use by default) and has its memory beside it too: a protocol started from it goes on
    with it.
    """

    def __init__(
        self, stages: list[dict], root: Path, common: dict[str, Any], chain: bool = True, baselines: str | None = None
    ):
        """Check the stages and remember where and how to run them (`baselines`: a baselines run for retention)."""
        if not stages:
            raise ValueError("the protocol has no stages")
        for i, stage in enumerate(stages):
            check_stage_tasks(stage, i)
        self.stages, self.root, self.common, self.chain, self.baselines = stages, Path(root), common, chain, baselines
        self.state_file = self.root / STATE_FILE
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"stages": []}

    def stage_args(self, i: int) -> dict[str, Any]:
        """Ultralytics overrides of stage `i`: the common keys, then the stage's own (``task`` removed)."""
        return {**self.common, **{k: v for k, v in self.stages[i].items() if k != "task"}}

    def eval_args(self, task: str) -> dict[str, Any]:
        """How a task is scored between stages: at the image size and batch of the stage that learned it (in a joint
        stage, with the task's own ``task_args``)."""
        i = next(i for i, stage in enumerate(self.stages) if task in stage_tasks(stage))
        args = self.stage_args(i)
        args.update((args.get("task_args") or {}).get(task) or {})
        return {"imgsz": args.get("imgsz", 640), "batch": args.get("batch", 16)}

    def deployment_imgsz(self) -> int:
        """The image size the final model predicts and exports at by default: the largest any task was trained at
        (the last stage's alone, e.g. classification at 160, would shrink detection and segmentation)."""
        tasks = {t for stage in self.stages for t in stage_tasks(stage)}
        return max(int(self.eval_args(t)["imgsz"]) for t in tasks)

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage, then write the forgetting report; return the protocol state."""
        from yolo_unified.engine import PRIMARY_METRIC, val
        from yolo_unified.models.unified.joint import JointTrainer
        from yolo_unified.models.unified.train import TRAINERS

        self.root.mkdir(parents=True, exist_ok=True)
        if "config" not in self.state:  # what resume= needs to carry on exactly as started
            self.state["config"] = {
                "stages": self.stages, "common": self.common, "chain": self.chain, "baselines": self.baselines
            }  # fmt: skip
            if RANK in {-1, 0}:  # DDP (yolo_unified.ddp): rank 0 writes, the other ranks keep their copy
                save_atomically(self.state, self.state_file)
        data = self.common["data"]
        initial = self.common.get("model")
        done = self.state["stages"]
        weights = done[-1]["weights"] if done and self.chain else initial
        for i, stage in enumerate(self.stages):
            tasks, label = stage_tasks(stage), "+".join(stage_tasks(stage))
            if i < len(done):
                LOGGER.info(f"{colorstr('protocol:')} stage {i + 1} ({label}) already done, skipping")
                continue
            learned = [t for s in done for t in stage_tasks(s)]
            context = StageContext(
                index=i,
                task=label,
                previous=learned if self.chain else [],
                own_scores={t: score for s in done for t, score in own_scores(s).items()},
                eval_args={t: self.eval_args(t) for t in learned},
                prev_weights=weights if self.chain else None,
                data=data,
                memory=same_on_every_rank(stage_memory(weights)) if self.chain else {},
                forget_limit=float(self.common.get("forget_limit", 0.05)),
                root=self.root,
            )
            stage_dir = self.root / f"{i + 1}-{label}"
            args = {**self.stage_args(i), "model": weights if self.chain else initial, "save_dir": str(stage_dir)}
            if len(tasks) > 1:
                args.update(joint=True, tasks=tasks)
            trainer_class = JointTrainer if len(tasks) > 1 else TRAINERS[tasks[0]]
            best = self.train_stage(trainer_class, args, context, stage_dir)
            if RANK > 0:  # DDP: rank 0 records the stage (scores, memory.pt, protocol.json); read what it wrote
                wait_for_rank_zero()
                self.state = json.loads(self.state_file.read_text())
                done = self.state["stages"]
                weights = done[-1]["weights"] if self.chain else initial
                continue
            with rank_zero_alone():  # DDP: the other ranks wait at the barrier below
                kept = best is not None
                if not kept:  # nothing acceptable was trained (e.g. every epoch forgot too much): keep the start
                    LOGGER.warning(f"stage {i + 1} ({label}) kept no weights; the protocol continues from {weights}")
                    best = weights
                else:
                    save_atomically(context.memory, memory_file(best))
                scores = {}
                for t in [*learned, *tasks] if self.chain else tasks:
                    save_dir = str(stage_dir / "eval")
                    scores.update(val(best, data, tasks=[t], save_dir=save_dir, plots=False, **self.eval_args(t)))
                record = {"task": label, "weights": str(best), "save_dir": str(stage_dir), "scores": scores}
                if len(tasks) > 1:
                    record.update(tasks=tasks, own_scores={t: scores[t][PRIMARY_METRIC[t]] for t in tasks})
                else:
                    record["own_score"] = scores[label][PRIMARY_METRIC[label]]
                done.append({**record, "kept_weights": kept})
                save_atomically(self.state, self.state_file)
            wait_for_rank_zero()
            weights = str(best) if self.chain else initial
        if RANK > 0:
            return self.state
        final = self.root / "weights" / "best.pt"  # the model after every stage, beside the report
        final.parent.mkdir(exist_ok=True)
        ckpt = torch.load(done[-1]["weights"], map_location="cpu", weights_only=False)
        memory = ckpt.pop("continual", None) or stage_memory(done[-1]["weights"])  # inside: before memory.pt existed
        ckpt["train_args"] = {**(ckpt.get("train_args") or {}), "imgsz": self.deployment_imgsz()}
        save_atomically(ckpt, final)
        save_atomically(memory, memory_file(final))
        limit = float(self.common.get("forget_limit", 0.05))
        write_report(self.root, self.state, forget_limit=limit, baselines=self.baselines)
        return self.state

    @staticmethod
    def train_stage(trainer_class: type, args: dict, context: StageContext, stage_dir: Path) -> str | None:
        """Train one stage, resuming an interrupted one; return its best (else last) checkpoint, or None."""
        weights = stage_dir / "weights"
        if (weights / ".trained").is_file():  # training ended but the stage was not recorded: finish it
            trainer = trainer_class(overrides={**args, "save_dir": str(stage_dir / "finish")}, context=context)
            trainer.best, trainer.last = weights / "best.pt", weights / "last.pt"
            trainer.finish_stage()
        elif (weights / "last.pt").is_file():
            LOGGER.info(f"{colorstr('protocol:')} resuming {weights / 'last.pt'}")
            trainer = trainer_class(overrides={"resume": str(weights / "last.pt")}, context=context)
            trainer.train()
        else:
            trainer = trainer_class(overrides=args, context=context)
            trainer.train()
        return str(weights / "best.pt") if (weights / "best.pt").is_file() else None
