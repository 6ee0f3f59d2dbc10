"""What a model knows, carried in its checkpoint (``ckpt["knowledge"]``): each task it learned with its classes, the
data it learned it on (path and a fingerprint of the val split) and its score right after that training; and the
commands that trained it, each with the scores it ended with (the accuracy matrix across the model's lineage)."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, colorstr

from yolo_unified.common import PRIMARY_METRIC, TASKS
from yolo_unified.data.config import load_data_config, val_fingerprint
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.models.unified.val import validate
from yolo_unified.workflows.base import memory_budget
from yolo_unified.workflows.report import PRIMARY

KNOWLEDGE = "knowledge"  # the checkpoint key


def knowledge_of(weights: str | Path | None) -> dict[str, Any]:
    """The record in checkpoint `weights` (empty for none, a model YAML, or a checkpoint written before records)."""
    if not weights or Path(weights).suffix != ".pt" or not Path(weights).is_file():
        return {"tasks": {}, "commands": []}
    return read_checkpoint(weights).get(KNOWLEDGE) or {"tasks": {}, "commands": []}


def command_line(keys: dict[str, Any]) -> str:
    """The ``yolo-unified train`` command equivalent to `keys` (those set)."""
    return " ".join(["yolo-unified train", *(f"{k}={v}" for k, v in keys.items() if v is not None)])


def record_command(
    before: dict[str, Any],
    weights: str | Path,
    data: str,
    trained: dict[str, float],
    scores: dict[str, float],
    command: str,
    save_dir: Path,
) -> dict[str, Any]:
    """Score the tasks the start model knew (its record `before`) that `command` did not train (`known_scores`, plots
    in `save_dir`); write into `weights` what it knows: `before`, with each task in `trained` (task -> its score right
    after its training on `data`, its classes the model's) entered anew, and the command appended with the scores it
    ended with (`scores` and the known tasks'). Returns the known tasks' scores."""
    known = known_scores(weights, before, list(trained), save_dir)
    record, cfg, ckpt = copy.deepcopy(before), load_data_config(data), read_checkpoint(weights)
    for task, score in trained.items():
        record["tasks"][task] = {
            "classes": list(ckpt["model"].task_names[task].values()),
            "data": str(Path(cfg["yaml_file"]).resolve()),
            "fingerprint": val_fingerprint(cfg, task),
            "score": float(score),
            "metric": PRIMARY_METRIC[task],
        }
    ended = {**scores, **{t: v for t, v in known.items() if isinstance(v, float)}}
    when = datetime.now().isoformat(timespec="seconds")
    record["commands"].append({"command": command, "date": when, "trained": list(trained), "scores": ended})
    save_atomically({**ckpt, KNOWLEDGE: record}, Path(weights))
    return known


def data_status(entry: dict[str, Any], task: str) -> str:
    """Whether a task's recorded val data is still there as it was: ``found``, ``changed`` or ``missing``."""
    try:
        same = val_fingerprint(load_data_config(entry["data"]), task) == entry["fingerprint"]
    except (FileNotFoundError, KeyError, ValueError):
        return "missing"
    return "found" if same else "changed"


def known_scores(weights: str | Path, before: dict[str, Any], trained: list[str], save_dir: Path) -> dict[str, Any]:
    """Each task the start model knew (its record `before`) that this command did not train: its score now on its
    recorded val data, or, when that data is gone or changed, why it was not scored (`data_status`)."""
    found: dict[str, Any] = {}
    for task, entry in before["tasks"].items():
        if task in trained:
            continue
        if (status := data_status(entry, task)) != "found":
            found[task] = status
            continue
        scored = validate(str(weights), entry["data"], save_dir / task, tasks=[task], plots=False)
        found[task] = float(scored[task][entry["metric"]])
    return found


def known_lines(before: dict[str, Any], now: dict[str, Any], limit: float) -> tuple[list[str], bool]:
    """Summary lines for the tasks the model knew before this command (`now`: `known_scores`), and whether every one
    of them was scored and held within `limit`."""
    lines, held = [], True
    for task, score in now.items():
        entry = before["tasks"][task]
        if isinstance(score, str):
            lines.append(f"  {task}  not scored: its val data {entry['data']} is {score} (learned before this command)")
            held = False
            continue
        lost = 1 - score / entry["score"] if entry["score"] else 0.0
        ok = lost <= limit
        held = held and ok
        lines.append(f"  {task}  {PRIMARY[task]:<6} {score:.3f}  forgetting {lost:+6.1%}  {'PASS' if ok else 'FAIL'}"
                     f"  (learned before this command: {entry['score']:.3f})")  # fmt: skip
    return lines, held


def after_training(
    before: dict[str, Any],
    weights: str | Path,
    data: str,
    trained: dict[str, float],
    command: str,
    limit: float,
    protected: bool = False,
) -> None:
    """After a one-task or joint run from a model whose record is `before`: `record_command`, and, when the model knew
    other tasks, print a summary that says PASS only if every one of them held (and that they were not protected,
    unless `protected`)."""
    known = record_command(before, weights, data, trained, trained, command, Path(weights).parent.parent / "known")
    if not known:
        return
    lines, held = known_lines(before, known, limit)
    verdict = "PASS" if held else "FAIL"
    head = f"{colorstr('bold', 'Summary')}: {verdict} (a task may lose at most {limit:.0%} of its score)"
    done = [f"  {t}  {PRIMARY[t]:<6} {v:.3f}  trained now" for t, v in trained.items()]
    note = [] if protected else ["  this run did not protect what the model knew (protect=False, or a joint run)"]
    LOGGER.info("\n".join([head, *done, *lines, *note]))


def describe(weights: str | Path) -> str:
    """What `weights` knows, as ``yolo-unified info`` prints it: tasks, the commands that trained it with their
    scores, the stored images, the file's size."""
    record, size = knowledge_of(weights), Path(weights).stat().st_size / 1e6
    lines = [f"{weights} ({size:.1f} MB)"]
    if not record["tasks"]:
        lines.append("  no record of what it learned (trained before yolo-unified kept one): later training cannot"
                     " protect its tasks; train it again, or validate it with yolo-unified val")  # fmt: skip
        return "\n".join(lines)
    known = [t for t in TASKS if t in record["tasks"]]
    lines.append("  task  score         classes  data")
    for task in known:
        e = record["tasks"][task]
        classes = ", ".join(e["classes"][:6]) + (f" (+{len(e['classes']) - 6})" if len(e["classes"]) > 6 else "")
        lines.append(f"  {task:4}  {PRIMARY[task]:6} {e['score']:.3f}  {classes}  "
                     f"{e['data']} ({data_status(e, task)})")  # fmt: skip
    lines.append("  commands (scores each ended with):")
    for i, c in enumerate(record["commands"], 1):
        scores = "  ".join(f"{t} {c['scores'][t]:.3f}" if t in c["scores"] else f"{t}   -  " for t in known)
        lines.append(f"  {i}. {c['date']}  {scores}  trained {'+'.join(c['trained'])}: {c['command']}")
    lines.append(f"  memory   {memory_budget(weights) or 'no stored images'}")
    return "\n".join(lines)
