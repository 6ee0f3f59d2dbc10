"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing
in Deep Multitask Networks", ICML 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo_unified.balancing.base import Balancer, present_on_any_rank, task_jacobians, trainable
from yolo_unified.ddp import mean_over_ranks


class GradNorm(Balancer):
    """Learnable loss weights ``w_t`` (sum ``T``) trained so that the weighted tasks' gradient norms on the last
    shared layer move together, each at a rate set by how far its loss has fallen (setting ``alpha``, default 1.5).

    With ``G_t = ||grad_W w_t L_t||`` (W: the last shared tensor of more than one dimension) and
    ``r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0))``, the loss ``sum_t |G_t - mean_k(G_k) r_t^alpha|`` (target held
    constant) is backpropagated into the weights' ``.grad`` by :meth:`combine`, which renormalises them to sum ``T``
    first; the network then backpropagates ``sum_t w_t L_t``. A step compares the tasks it holds; one with a single
    task leaves the weights as they are."""

    key = "gradnorm"
    meanings = {"alpha": "asymmetry: how strongly a task whose loss fell less is pushed (0: equal gradient norms)"}

    def __init__(self, tasks: Sequence[str], *, alpha: float = 1.5) -> None:
        """Weights start at 1; the initial losses are taken at the first step."""
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.weights = torch.nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted loss for the network; the GradNorm loss's gradient goes into the weights' ``.grad``."""
        with torch.no_grad():
            self.weights.clamp_(min=1e-6)
            self.weights.mul_(len(self.tasks) / self.weights.sum())
        layers = [p for p in trainable(shared) if p.ndim > 1]
        if not layers:
            raise ValueError(f"{self.key}: no shared weight tensor (of more than one dimension) requires a gradient")
        ordered = self.ordered(losses)
        (values,) = mean_over_ranks([torch.stack([loss.detach() for loss in ordered])])  # DDP: the global losses
        rows = present_on_any_rank(ordered)
        first = [i for i in rows if self.initial_losses[i].isnan()]
        self.initial_losses[first] = values[first]  # a task's L_t(0) is its loss in its first step
        if len(rows) > 1:  # the weights move only in steps with tasks to compare
            (jacobian,) = mean_over_ranks(task_jacobians([ordered[i] for i in rows], layers[-1:]))
            norms = jacobian.flatten(1).norm(dim=1)
            weighted_norms = self.weights[rows] * norms  # = ||grad_W w_t L_t||, as w_t > 0; no graph in the norms
            progress = values[rows] / self.initial_losses[rows].clamp(min=1e-12)
            target = weighted_norms.mean() * (progress / progress.mean()) ** self.alpha
            (weighted_norms - target.detach()).abs().sum().backward(inputs=[self.weights])
        return self.weighted_sum(losses, self.weights.detach())
