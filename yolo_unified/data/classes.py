"""Class lists of a task across datasets: matching the data's classes to the model's by name, growing the model's list
with the classes new data brings, and renumbering a batch's labels from the data's ids to the model's."""

from __future__ import annotations

from typing import Any

import torch

from yolo_unified.data.layout import IGNORE


def name_key(name: str) -> str:
    """A class name as a comparison key: lower case, letters and digits only (``Traffic_Light`` -> ``trafficlight``)."""
    return "".join(c for c in str(name).lower() if c.isalnum())


def class_map(model_names: dict[int, str], data_names: dict[int, str], data: Any, task: str) -> list[int]:
    """For each class id of the data, the model's id of the class of that name (-1: the model lacks it). A name given
    twice, or a model class's under another spelling (``Person``, ``traffic_light``), is a ValueError naming `data`."""
    ids = {name: i for i, name in model_names.items()}
    spelled = {name_key(name): name for name in model_names.values()}
    seen: dict[str, int] = {}
    for i, name in data_names.items():
        if name in seen:
            raise ValueError(f"{data}: '{task}:' names '{name}' twice (ids {seen[name]} and {i}); give each class once")
        seen[name] = i
        if name not in ids and name_key(name) in spelled:
            raise ValueError(
                f"{data}: '{task}:' class {i} '{name}' is the model's class {ids[spelled[name_key(name)]]} "
                f"'{spelled[name_key(name)]}' spelled differently; classes match by name, so spell it as the model does"
            )
    return [ids.get(data_names[i], -1) for i in range(len(data_names))]


def grown_names(model_names: dict[int, str], data_names: dict[int, str], data: Any, task: str) -> dict[int, str]:
    """The model's class names followed by the data's names it lacks, in the data's order (`class_map` checks)."""
    missing = [data_names[i] for i, m in enumerate(class_map(model_names, data_names, data, task)) if m < 0]
    return {**model_names, **{len(model_names) + k: name for k, name in enumerate(missing)}}


def remap_labels(batch: dict, task: str, lut: torch.Tensor) -> dict:
    """`batch` with its `task` labels renumbered by `lut` (data id -> model id, -1: a class the model lacks): such
    boxes are left out, such pixels become ``IGNORE``, such images keep class -1 (the validator leaves them out)."""
    lut = lut.to(batch["img"].device)
    if task == "seg":
        mask = batch["semantic_mask"]
        ids = mask.long()
        mapped = torch.where(ids < len(lut), lut[ids.clamp(max=len(lut) - 1)], IGNORE)  # IGNORE stays IGNORE
        return {**batch, "semantic_mask": mapped.masked_fill(mapped < 0, IGNORE).to(mask.dtype)}
    cls = batch["cls"]
    mapped = lut[cls.long().view(-1)].view(cls.shape)
    if task == "cls":
        return {**batch, "cls": mapped.to(cls.dtype)}
    keep = (mapped >= 0).view(-1)
    per_box = ("bboxes", "batch_idx")
    out = {k: v[keep] if k in per_box else v for k, v in batch.items()}
    return {**out, "cls": mapped[keep].to(cls.dtype)}
