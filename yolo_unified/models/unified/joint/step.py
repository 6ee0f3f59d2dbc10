"""Joint training's step: each task's loss on its own labelled images, from its own batches or from batches of
images the tasks share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from yolo_unified.data.shared import task_views
from yolo_unified.nn.tasks import UnifiedLoss, UnifiedModel, batch_task, loss_scale, select_images


def task_batches(model: UnifiedModel, batch: dict) -> list[tuple[str, dict, dict | None]]:
    """``(task, task batch, its outputs)`` of each task a batch has labels of.

    A batch of one task's own dataset is that task's batch, its outputs left to the loss to compute. A batch of
    shared images (`SharedDataset`) runs through the model once; each task gets the images that have its label
    (`task_views`) and their outputs, so an image without a task's label adds nothing to that task's loss.
    """
    if "tasks" not in batch:
        return [(batch_task(batch), batch, None)]
    raw = UnifiedLoss.raw(model(batch["img"]))
    return [(task, view, select_images(raw, index)) for task, (index, view) in task_views(batch).items()]


def task_losses(
    model: UnifiedModel, batches: dict[str, list[dict]], tasks: list[str], terms: Sequence[Any] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Each task's loss on its own labelled images only, and the task's loss items (mean over its batches).

    A task's loss is its Ultralytics loss plus the loss terms of `terms` (the strategies; none by default), on the
    scale of one image, summed over its batches of the step: Ultralytics sums detection and segmentation losses over
    a batch's images and averages classification's, so every task enters the balancing on the same footing. A batch
    of a task's own dataset is its own forward pass (its own BatchNorm statistics); a batch of shared images is one
    forward pass for all its tasks (`task_batches`). A task without a batch in the step gets a zero loss without a
    graph and no items.
    """
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
