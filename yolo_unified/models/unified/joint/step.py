"""Joint training's step: each task's loss on its own labelled images, from its own batches or from batches of
images the tasks share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from yolo_unified.data.shared import task_views
from yolo_unified.nn.tasks import UnifiedLoss, UnifiedModel, batch_task, loss_scale, select_images


def task_batches(model: UnifiedModel, batch: dict) -> list[tuple[str, dict, dict | None]]:
    """``(task, task batch, its outputs)`` of each task a batch has labels of: a shared-images batch runs through the
    model once, each task getting the images that have its label (`task_views`)."""
    if "tasks" not in batch:
        return [(batch_task(batch), batch, None)]
    raw = UnifiedLoss.raw(model(batch["img"]))
    return [(task, view, select_images(raw, index)) for task, (index, view) in task_views(batch).items()]


def task_losses(
    model: UnifiedModel, batches: dict[str, list[dict]], tasks: list[str], terms: Sequence[Any] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Each task's loss on its own labelled images (plus the strategies' `terms`), on the scale of one image and
    summed over its batches, so every task enters the balancing alike; and its loss items. A task without a batch in
    the step gets a zero loss without a graph."""
    device = next(model.parameters()).device
    losses = {task: torch.zeros((), device=device) for task in tasks}
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for batch in (b for stream in batches.values() for b in stream):
        for task, view, preds in task_batches(model, batch):
            loss, parts = model.loss(view, preds=preds, terms=terms)
            losses[task] = losses[task] + loss.sum() / loss_scale(view)
            counts[task] = counts.get(task, 0) + 1
            task_sums = sums.setdefault(task, {})
            for name, value in parts.items():
                task_sums[name] = task_sums.get(name, 0.0) + float(value)
    items = {task: {name: value / counts[task] for name, value in sums[task].items()} for task in sums}
    return losses, items
