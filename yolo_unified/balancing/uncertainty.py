"""Uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo_unified.balancing.base import Balancer, present


class Uncertainty(Balancer):
    """``total = sum_t exp(-s_t) L_t + s_t`` with one learnable log-variance ``s_t = log sigma_t^2`` per task.

    Setting: ``init`` (initial ``s_t``, default 0: every weight starts at 1).

    The paper's likelihoods give ``1/(2 sigma^2) L + log sigma`` for a regression (Gaussian) loss and
    ``1/sigma^2 L + log sigma`` for a classification (softmax) loss. Here every task gets the same form, twice the
    regression one: our tasks' losses are not pure likelihoods (det mixes box IoU, DFL and BCE; seg mixes CE and
    Dice), so no factor is more right than another, and one form keeps the tasks on an equal footing. Each weight
    ``exp(-s_t)`` then tends to ``1 / L_t``, the inverse of its loss scale, for every choice of factor up to a
    constant. The log-variances join the optimizer (no weight decay: it would pull every weight toward 1). A task
    without a batch in the step (``task_share``, non-round-robin sampling) adds no regulariser either: ``s_t`` alone
    would be pushed down with nothing to hold it, and a task in half the steps would end with twice the weight.
    """

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
