"""What a model knows, carried in its checkpoint (``ckpt["knowledge"]``): each task and class group it learned (a
group: the classes of a task that one data file taught it) with the data it learned it on (path and a fingerprint of
the val split) and its score right after that training; and the commands that trained it, each with the scores it
ended with (the accuracy matrix across the model's lineage)."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from yolo_unified.common import PRIMARY_METRIC, TASKS, learned_tasks
from yolo_unified.data.config import load_data_config, val_fingerprint
from yolo_unified.data.stored import write_stored
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.models.unified.val import validate
from yolo_unified.workflows.base import checkpoint_memory, is_checkpoint_file, memory_budget
from yolo_unified.workflows.report import PRIMARY, summary_head

KNOWLEDGE = "knowledge"  # the checkpoint key


def knowledge_of(weights: str | Path | None) -> dict[str, Any]:
    """The record in checkpoint `weights`: ``{"learned": [group, ...], "commands": [...]}`` (empty for none, a model
    YAML, or a checkpoint written before records)."""
    if not is_checkpoint_file(weights):
        return {"learned": [], "commands": []}
    record = read_checkpoint(weights).get(KNOWLEDGE) or {"learned": [], "commands": []}
    if "tasks" in record:  # the first records (0.x, one entry per task, scores by task)
        learned = [{"task": t, **e} for t, e in record["tasks"].items()]
        keys = {e["task"]: key(e) for e in learned}
        commands = [{**c, "scores": {keys.get(t, t): v for t, v in c["scores"].items()}} for c in record["commands"]]
        record = {"learned": learned, "commands": commands}
    return record


def unrecorded_tasks(weights: str | Path | None, record: dict[str, Any]) -> list[str]:
    """The tasks checkpoint `weights` learned (``task_imgsz``) that its `record` does not name: a model trained before
    records were kept."""
    if not is_checkpoint_file(weights):
        return []
    recorded = {g["task"] for g in record["learned"]}
    return [t for t in TASKS if t in learned_tasks(read_checkpoint(weights).get("model")) - recorded]


def key(group: dict[str, Any]) -> str:
    """How a learned group is named in the record's command scores: its task and data file."""
    return f"{group['task']} {group['data']}"


def label(group: dict[str, Any], learned: list[dict[str, Any]]) -> str:
    """How summaries name a group: its task, and its classes where the model learned that task in several groups."""
    if sum(g["task"] == group["task"] for g in learned) < 2:
        return group["task"]
    classes = group["classes"]
    return f"{group['task']} [{', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}]"


def recorded_tasks(record: dict[str, Any], besides: list[str]) -> list[str]:
    """The tasks `record` knows, in the order it learned them, but those in `besides`."""
    return [t for t in dict.fromkeys(g["task"] for g in record["learned"]) if t not in besides]


def recorded_scores(record: dict[str, Any], tasks: list[str]) -> dict[str, float]:
    """The score `record` holds for each of `tasks`, right after its training (a task of several groups: the last)."""
    return {g["task"]: g["score"] for g in record["learned"] if g["task"] in tasks}


def warn_unprotected(what: list[str]) -> None:
    """Say that a run with ``protect=False`` does not keep `what` (tasks or class groups the model knows)."""
    LOGGER.warning(f"protect=False: a plain fine-tune; {', '.join(what)}, which the model knows, are not kept")


def known_classes(record: dict[str, Any], task: str) -> set[str]:
    """Every class of `task` the record's groups learned."""
    return {c for g in record["learned"] if g["task"] == task for c in g["classes"]}


def command_line(keys: dict[str, Any]) -> str:
    """The ``yolo-unified train`` command equivalent to `keys` (those set)."""
    return " ".join(["yolo-unified train", *(f"{k}={v}" for k, v in keys.items() if v is not None)])


def record_command(
    before: dict[str, Any],
    weights: str | Path,
    trained: list[tuple[str, str, float]],
    scores: dict[str, float],
    command: str,
    save_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the groups the start model knew (its record `before`) that `command` did not train again (`known_scores`,
    plots in `save_dir`); write into `weights` what it knows: those groups, and a group for each ``(task, data,
    score right after its training)`` in `trained` (the data's classes of that task), with the command appended and
    the scores it ended with (`scores`, by task, and the known groups'). Returns the known groups' scores and the
    record written."""
    ckpt = read_checkpoint(weights)
    learned = list({key(g): g for g in (group_of(*t) for t in trained)}.values())  # a task trained twice: the last
    for group in learned:  # what the group scores on the stored images, to check it by where its val data is gone
        group["stored"] = stored_score(weights, ckpt, group["task"], save_dir)
    retrained = {key(g) for g in learned}
    kept = [g for g in before["learned"] if key(g) not in retrained]
    known = known_scores(weights, ckpt, kept, save_dir)
    ended = {key(g): scores[g["task"]] for g in learned if g["task"] in scores}
    ended.update({k: v for k, v in known.items() if isinstance(v, float)})
    record = copy.deepcopy(before)
    record["learned"] = [*copy.deepcopy(kept), *learned]
    when = datetime.now().isoformat(timespec="seconds")
    record["commands"].append({"command": command, "date": when, "trained": [t for t, *_ in trained], "scores": ended})
    save_atomically({**ckpt, KNOWLEDGE: record}, Path(weights))
    return known, record


def group_of(task: str, data: str, score: float) -> dict[str, Any]:
    """The record of a task learned on `data` (its classes there, the val split's fingerprint) scoring `score`."""
    cfg = load_data_config(data)
    return {
        "task": task,
        "classes": list(cfg["tasks"][task]["names"].values()),
        "data": str(Path(cfg["yaml_file"]).resolve()),
        "fingerprint": val_fingerprint(cfg, task),
        "score": float(score),
        "metric": PRIMARY_METRIC[task],
    }


def stored_score(
    weights: str | Path, ckpt: dict[str, Any], task: str, save_dir: Path, count: int | None = None
) -> dict[str, Any] | None:
    """The score of `weights` (`ckpt`: the checkpoint read from it) on the first `count` (all) images of `task` its
    memory stores: ``{"images": how many, "score": ...}``; None where it stores none."""
    samples = ((checkpoint_memory(ckpt, weights).get("replay") or {}).get(task) or [])[:count]
    if not samples:
        return None
    names = list(ckpt["model"].task_names[task].values())
    folder = save_dir / f"stored-{task}-{len(samples)}"  # the first n images: the same files for the same n
    data = write_stored(samples, task, names, folder)
    scored = validate(str(weights), data, folder / "val", tasks=[task], plots=False)
    return {"images": len(samples), "score": float(scored[task][PRIMARY_METRIC[task]])}


def data_status(group: dict[str, Any]) -> str:
    """Whether a group's recorded val data is still there as it was: ``found``, ``changed`` or ``missing``."""
    try:
        same = val_fingerprint(load_data_config(group["data"]), group["task"]) == group["fingerprint"]
    except (FileNotFoundError, KeyError, ValueError):
        return "missing"
    return "found" if same else "changed"


def known_scores(
    weights: str | Path, ckpt: dict[str, Any], groups: list[dict[str, Any]], save_dir: Path
) -> dict[str, Any]:
    """Each of `groups` (learned before this command): the score of `weights` (`ckpt`: the checkpoint read from it)
    now on the group's recorded val data (the model's classes matched to the data's by name); when that data is gone
    or changed (`data_status`), ``{"status", "images", "score"}`` on the task's images the group was checked on when
    learned (`stored_score`), else the status alone."""
    found: dict[str, Any] = {}
    for i, group in enumerate(groups):
        if (status := data_status(group)) != "found":
            stored = group.get("stored") and stored_score(
                weights, ckpt, group["task"], save_dir, group["stored"]["images"]
            )
            found[key(group)] = {"status": status, **stored} if stored else status
            continue
        task = group["task"]
        scored = validate(str(weights), group["data"], save_dir / f"{task}-{i}", tasks=[task], plots=False)
        found[key(group)] = float(scored[task][group["metric"]])
    return found


def known_lines(record: dict[str, Any], now: dict[str, Any], limit: float) -> tuple[list[str], bool]:
    """Summary lines for the groups the model knew before this command (`now`: `known_scores`; `record`: what it
    knows after it), and whether every one of them was scored and held within `limit`."""
    lines, held = [], True
    groups = {key(g): g for g in record["learned"]}
    for name, score in now.items():
        group = groups[name]
        shown = label(group, record["learned"])
        if isinstance(score, str):
            gone = f"its val data {group['data']} is {score}"
            lines.append(f"  {shown}  not scored: {gone} (learned before this command; no stored images)")
            held = False
            continue
        was, where = group["score"], "learned before this command"
        if isinstance(score, dict):  # on its stored images
            was, where = group["stored"]["score"], (f"on its {score['images']} stored images, as its val data "
                                                    f"{group['data']} is {score['status']}")  # fmt: skip
            score = score["score"]
        lost = 1 - score / was if was else 0.0
        ok = lost <= limit
        held = held and ok
        lines.append(f"  {shown}  {PRIMARY[group['task']]:<6} {score:.3f}  forgetting {lost:+6.1%}  "
                     f"{'PASS' if ok else 'FAIL'}  ({where}: {was:.3f})")  # fmt: skip
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
    """After a one-task or joint run on `data` from a model whose record is `before`: `record_command`, and, when the
    model knew other groups, print a summary that says PASS only if every one of them held (and that they were not
    protected, unless `protected`)."""
    learned = [(task, data, score) for task, score in trained.items()]
    known, record = record_command(before, weights, learned, trained, command, Path(weights).parent.parent / "known")
    if not known:
        return
    lines, held = known_lines(record, known, limit)
    head = summary_head(held, limit)
    done = [f"  {label(g, record['learned'])}  {PRIMARY[g['task']]:<6} {g['score']:.3f}  trained now"
            for g in record["learned"] if key(g) not in known]  # fmt: skip
    note = [] if protected else ["  this run did not protect what the model knew (protect=False, or a joint run)"]
    LOGGER.info("\n".join([head, *done, *lines, *note]))


def describe(weights: str | Path) -> str:
    """What `weights` knows, as ``yolo-unified info`` prints it: tasks and class groups (each with its score right
    after its training, on its val data and on its stored images), the commands that trained it with their scores,
    the stored images, the file's size."""
    record, size = knowledge_of(weights), Path(weights).stat().st_size / 1e6
    lines = [f"{weights} ({size:.1f} MB)"]
    if not record["learned"]:
        lines.append("  no record of what it learned (trained before yolo-unified kept one): later training cannot"
                     " protect its tasks; train it again, or validate it with yolo-unified val")  # fmt: skip
        return "\n".join(lines)
    learned = sorted(record["learned"], key=lambda g: TASKS.index(g["task"]))
    lines.append("  task  score         stored (images)  classes  data")
    for g in learned:
        classes = ", ".join(g["classes"][:6]) + (f" (+{len(g['classes']) - 6})" if len(g["classes"]) > 6 else "")
        stored = f"{g['stored']['score']:.3f} ({g['stored']['images']})" if g.get("stored") else "-"
        lines.append(f"  {g['task']:4}  {PRIMARY[g['task']]:6} {g['score']:.3f}  {stored:15}  {classes}  "
                     f"{g['data']} ({data_status(g)})")  # fmt: skip
    lines.append("  commands (scores each ended with):")
    for i, c in enumerate(record["commands"], 1):
        scores = "  ".join(f"{label(g, learned)} {c['scores'][key(g)]:.3f}" if key(g) in c["scores"]
                           else f"{label(g, learned)}   -  " for g in learned)  # fmt: skip
        lines.append(f"  {i}. {c['date']}  {scores}  trained {'+'.join(c['trained'])}: {c['command']}")
    lines.append(f"  memory   {memory_budget(weights) or 'no stored images'}")
    return "\n".join(lines)
