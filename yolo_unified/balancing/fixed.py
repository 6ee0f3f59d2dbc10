"""Fixed loss weights: the plain weighted sum, the baseline every other method is compared with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo_unified.balancing.base import Balancer


class Fixed(Balancer):
    """``total = sum_t w_t L_t`` with constant weights (``weights: {det: 1.0, seg: 2.0}``; a task left out gets 1).

    A weight of 0 leaves its task out of training; negative weights, or all weights 0, are rejected.
    """

    key = "fixed"
    meanings = {"weights": "loss weight per task, e.g. {seg: 2.0} (a task left out: 1.0; 0 leaves it out of training)"}

    def __init__(self, tasks: Sequence[str], *, weights: dict[str, float] | None = None) -> None:
        """Check and keep the per-task weights."""
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(f"{self.key}: weights for unknown tasks {sorted(unknown)}; tasks are {self.tasks}")
        values = [float(weights.get(t, 1.0)) for t in self.tasks]
        for task, w in zip(self.tasks, values, strict=True):
            if not w >= 0:  # also rejects NaN
                raise ValueError(f"{self.key}: weights.{task} is {w}; loss weights must be >= 0")
        if not any(values):
            raise ValueError(f"{self.key}: every task weight is 0 ({weights}); at least one must be > 0")
        self.register_buffer("weights", torch.tensor(values))

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the losses."""
        return self.weighted_sum(losses, self.weights)
