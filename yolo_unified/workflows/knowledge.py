"""What a model knows, carried in its checkpoint (``ckpt["knowledge"]``): each task it learned with its classes, the
data it learned it on (path and a fingerprint of the val split) and its score right after that training; and the
commands that trained it, each with the scores it ended with (the accuracy matrix across the model's lineage)."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from yolo_unified.common import PRIMARY_METRIC, TASKS
from yolo_unified.data.config import load_data_config, val_fingerprint
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.workflows.base import memory_budget

KNOWLEDGE = "knowledge"  # the checkpoint key


def knowledge_of(weights: str | Path | None) -> dict[str, Any]:
    """The record in checkpoint `weights` (empty for none, a model YAML, or a checkpoint written before records)."""
    if not weights or Path(weights).suffix != ".pt" or not Path(weights).is_file():
        return {"tasks": {}, "commands": []}
    return copy.deepcopy(read_checkpoint(weights).get(KNOWLEDGE)) or {"tasks": {}, "commands": []}


def command_line(keys: dict[str, Any]) -> str:
    """The ``yolo-unified train`` command equivalent to `keys` (those set)."""
    return " ".join(["yolo-unified train", *(f"{k}={v}" for k, v in keys.items() if v is not None)])


def learned(
    start: str | Path | None,
    weights: str | Path,
    data: str,
    trained: dict[str, float],
    scores: dict[str, float],
    command: str,
) -> dict[str, Any]:
    """The record of `weights`, which a command trained from `start`: the start model's record, with each task in
    `trained` (task -> its score right after its training on `data`, its classes the model's) entered anew, and the
    command appended with the `scores` the tasks it scored ended with."""
    record, cfg = knowledge_of(start), load_data_config(data)
    names = read_checkpoint(weights)["model"].task_names
    for task, score in trained.items():
        record["tasks"][task] = {
            "classes": list(names[task].values()),
            "data": str(Path(cfg["yaml_file"]).resolve()),
            "fingerprint": val_fingerprint(cfg, task),
            "score": float(score),
            "metric": PRIMARY_METRIC[task],
        }
    when = datetime.now().isoformat(timespec="seconds")
    record["commands"].append({"command": command, "date": when, "trained": list(trained), "scores": scores})
    return record


def remember(
    start: str | Path | None,
    weights: str | Path,
    data: str,
    trained: dict[str, float],
    scores: dict[str, float],
    command: str,
) -> None:
    """Write what `weights` knows (`learned`) into it, atomically."""
    record = learned(start, weights, data, trained, scores, command)
    save_atomically({**read_checkpoint(weights), KNOWLEDGE: record}, Path(weights))


def data_status(entry: dict[str, Any], task: str) -> str:
    """Whether a task's recorded val data is still there as it was: ``found``, ``changed`` or ``missing``."""
    try:
        same = val_fingerprint(load_data_config(entry["data"]), task) == entry["fingerprint"]
    except (FileNotFoundError, KeyError, ValueError):
        return "missing"
    return "found" if same else "changed"


def describe(weights: str | Path) -> str:
    """What `weights` knows, as ``yolo-unified info`` prints it: tasks, the commands that trained it with their
    scores, the stored images, the file's size."""
    record, size = knowledge_of(weights), Path(weights).stat().st_size / 1e6
    lines = [f"{weights} ({size:.1f} MB)"]
    if not record["tasks"]:
        lines.append("  no record of what it learned (trained before yolo-unified kept one): later training cannot"
                     " protect its tasks; train it again, or validate it with yolo-unified val")  # fmt: skip
        return "\n".join(lines)
    lines.append("  task  score           classes  data")
    for task in [t for t in TASKS if t in record["tasks"]]:
        e = record["tasks"][task]
        classes = ", ".join(e["classes"][:6]) + (f" (+{len(e['classes']) - 6})" if len(e["classes"]) > 6 else "")
        lines.append(f"  {task:4}  {e['metric'].split('/')[-1]:8} {e['score']:.3f}  {classes}  "
                     f"{e['data']} ({data_status(e, task)})")  # fmt: skip
    known = [t for t in TASKS if t in record["tasks"]]
    lines.append("  commands (scores each ended with):")
    for i, c in enumerate(record["commands"], 1):
        scores = "  ".join(f"{t} {c['scores'][t]:.3f}" if t in c["scores"] else f"{t}   -  " for t in known)
        lines.append(f"  {i}. {c['date']}  {scores}  trained {'+'.join(c['trained'])}: {c['command']}")
    lines.append(f"  memory   {memory_budget(weights) or 'no stored images'}")
    return "\n".join(lines)
