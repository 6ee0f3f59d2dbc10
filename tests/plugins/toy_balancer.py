"""A balancing method from outside the package, in one file: each task's loss divided by its first value."""

from collections.abc import Sequence

import torch

from yolo_unified.balancing import Balancer, register_balancer


@register_balancer
class FirstLossScale(Balancer):
    """``total = sum_t L_t / L_t(first step)``: every task starts at 1."""

    key = "first_loss_scale"
    steps = 0

    def __init__(self, tasks: Sequence[str]) -> None:
        """No scale known before the first step."""
        super().__init__(tasks)
        self.register_buffer("first", torch.zeros(len(self.tasks)))

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The losses, each divided by its value in the first step that had it."""
        FirstLossScale.steps += 1
        values = torch.stack([loss.detach() for loss in self.ordered(losses)])
        self.first = torch.where((self.first == 0) & (values > 0), values, self.first)
        return self.weighted_sum(losses, 1 / self.first.clamp(min=1e-12))
