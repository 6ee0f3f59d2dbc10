"""Uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo_unified.balancing.base import Balancer, present


class Uncertainty(Balancer):
    """``total = sum_t exp(-s_t) L_t + s_t`` with one learnable log-variance ``s_t = log sigma_t^2`` per task
    (setting ``init``, default 0).

    Every task gets the same form (the paper's regression one, doubled): det and seg losses are no pure likelihoods, so
    no factor is more right, and each weight tends to ``1 / L_t`` anyway. No weight decay on the log-variances; a task
    without a batch in the step adds no regulariser (``s_t`` would sink with nothing to hold it)."""

    key = "uncertainty"
    meanings = {"init": "initial log-variance of every task (0: every weight starts at 1)"}

    def __init__(self, tasks: Sequence[str], *, init: float = 0.0) -> None:
        """One log-variance per task, all at `init`."""
        super().__init__(tasks)
        self.log_vars = torch.nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The precision-weighted losses plus the log-variance regulariser of the tasks with a batch in the step."""
        total, weights = self.weighted_sum(losses, torch.exp(-self.log_vars))
        return total + self.log_vars[present(self.ordered(losses))].sum(), weights
