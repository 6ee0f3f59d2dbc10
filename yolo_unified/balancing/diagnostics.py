"""Gradient diagnostics for joint training: how large each task's gradient is and how much the tasks conflict."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from yolo_unified.balancing.base import jacobians_gramian, present, task_jacobians, trainable


def gradient_stats(losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]) -> dict[str, float]:
    """Each task's gradient norm on the `shared` parameters and the cosine similarity of every pair of tasks
    (`gramian_stats`), from one backward pass per task. Leaves every ``.grad`` and the graph as they were: call it
    before ``backward()`` or ``combine()``."""
    values = list(losses.values())
    gramian = jacobians_gramian(task_jacobians(values, trainable(shared)))
    return gramian_stats(list(losses), gramian, present(values))


def gramian_stats(tasks: Sequence[str], gramian: torch.Tensor, live: Sequence[int]) -> dict[str, float]:
    """Each task's gradient norm (``grad_norm/<task>``) and the cosine of every pair (``cos/<a>-<b>``, negative: they
    pull apart) from the Gramian of their gradients; NaN for a zero gradient or a task not in `live`."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    stats = {
        f"grad_norm/{t}": norm if i in live else float("nan")
        for i, (t, norm) in enumerate(zip(tasks, norms.tolist(), strict=True))
    }
    for (i, a), (k, b) in combinations(enumerate(tasks), 2):
        scale = norms[i] * norms[k]
        stats[f"cos/{a}-{b}"] = (gramian[i, k] / scale).item() if scale > 0 else float("nan")
    return stats
