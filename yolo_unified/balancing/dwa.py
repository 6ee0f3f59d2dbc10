"""Dynamic weight average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo_unified.balancing.base import Balancer


class DWA(Balancer):
    """``w_t = T softmax_t(r_t / temp)``, ``r_t = L_t(e-1) / L_t(e-2)`` the ratio of the task's mean losses over
    the last two epochs (1 in the first two): a task whose loss fell slower gets more weight. Setting ``temp`` (2)."""

    key = "dwa"
    meanings = {"temp": "softmax temperature of the loss ratios (2 in the paper; larger is more uniform)"}

    def __init__(self, tasks: Sequence[str], *, temp: float = 2.0) -> None:
        """Start with no loss history."""
        super().__init__(tasks)
        if not temp > 0:
            raise ValueError(f"{self.key}: temp is {temp}; it must be > 0")
        self.temp = float(temp)
        self.register_buffer("history", torch.full((2, len(self.tasks)), float("nan")))  # rows: epoch e-2, e-1

    def current_weights(self) -> torch.Tensor:
        """This epoch's weights, in task order."""
        if self.history.isnan().any():
            return torch.ones(len(self.tasks), device=self.history.device)
        ratios = self.history[1] / self.history[0]
        return len(self.tasks) * torch.softmax(ratios / self.temp, dim=0)

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The losses weighted by this epoch's weights."""
        return self.weighted_sum(losses, self.current_weights())

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Shift the two-epoch loss history by the epoch just finished."""
        latest = torch.tensor([float(v) for v in self.ordered(epoch_losses)], device=self.history.device)
        self.history.copy_(torch.stack([self.history[1], latest]))
