"""The interface every loss-balancing method implements, and the per-task gradients several of them need."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch

from yolo_unified.ddp import max_over_ranks


class Balancer(torch.nn.Module):
    """A way to combine the task losses of joint training: one file, one cfg key, one interface.

    ``kind`` says what :meth:`combine` returns: ``"loss"``, the weighted total to backpropagate; ``"gradient"``,
    ``None``, every ``.grad`` filled already (shared parameters with the aggregated gradient, the heads with their own).
    As an ``nn.Module`` its learnable weights join the optimizer and ``state_dict()`` holds what a resumed run needs."""

    key: ClassVar[str] = ""
    kind: ClassVar[str] = "loss"
    meanings: ClassVar[dict[str, str]] = {}  # setting (keyword argument) -> what it means, for the settings reference

    def __init__(self, tasks: Sequence[str]) -> None:
        """Balance the losses of `tasks` (names, in a fixed order)."""
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"balancing method '{self.key}': tasks must be distinct and at least one, got {tasks}")
        self.tasks = list(tasks)

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Combine one step's scalar task losses; return the total to backpropagate (or None) and each task's weight.

        `shared` are the parameters every task uses (backbone, neck, tower), in model order.
        """
        raise NotImplementedError

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """After each epoch, with every task's mean training loss over the epoch (only DWA uses it)."""

    def ordered(self, losses: dict[str, torch.Tensor | float]) -> list:
        """The values of `losses` in task order; the keys must be exactly the tasks."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"balancing method '{self.key}': expected losses for {self.tasks}, got {list(losses)}")
        return [losses[t] for t in self.tasks]

    def weighted_sum(
        self, losses: dict[str, torch.Tensor], weights: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``sum_t weights[t] * losses[t]`` (weights in task order) and the weights as a dict."""
        total = (weights * torch.stack(self.ordered(losses))).sum()
        return total, dict(zip(self.tasks, weights.tolist(), strict=True))


def present(losses: Sequence[torch.Tensor]) -> list[int]:
    """Indices of the losses with a graph: the tasks that have a batch in the step (a task without one gets a zero
    loss without a graph, under ``task_share`` or a non-round-robin sampling)."""
    return [i for i, loss in enumerate(losses) if loss.requires_grad]


def present_on_any_rank(losses: Sequence[torch.Tensor]) -> list[int]:
    """`present` over every DDP rank: the tasks with a batch in the step on any rank (a rank without one has a zero
    row for it); `present` itself in one process."""
    local = torch.tensor([float(loss.requires_grad) for loss in losses])
    return [i for i, anywhere in enumerate(max_over_ranks(local).tolist()) if anywhere]


def trainable(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of `params` that require a gradient (frozen parameters take no part in balancing)."""
    return [p for p in params if p.requires_grad]


def jacobians_gramian(jacobians: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Gramian ``J J^T`` of the task Jacobian whose columns are split into `jacobians` (one ``[tasks, *p.shape]``
    tensor per parameter, as `task_jacobians` returns them): the dot products of every pair of task gradients."""
    return sum(j.flatten(1) @ j.flatten(1).T for j in jacobians)


def graph_nodes(loss: torch.Tensor) -> set[torch.autograd.graph.Node]:
    """The nodes of `loss`'s graph that hold what a backward pass frees (all but the gradient accumulators)."""
    nodes, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in nodes or type(node).__name__ == "AccumulateGrad":
            continue
        nodes.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


def kept_graphs(losses: Sequence[torch.Tensor], live: Sequence[int]) -> set[int]:
    """The live losses whose backward pass must keep its graph: those sharing a node with a later live loss (tasks
    on the same images, one forward pass). A task with its own forward pass frees its graph after its backward pass,
    so the task gradients cost no more memory than a loss-level step."""
    graphs = {i: graph_nodes(losses[i]) for i in live}
    return {i for k, i in enumerate(live) if any(graphs[i] & graphs[j] for j in live[k + 1 :])}


def task_jacobians(
    losses: Sequence[torch.Tensor], shared: Sequence[torch.Tensor], *, into_others: bool = False
) -> list[torch.Tensor]:
    """The Jacobian of `losses` w.r.t. each tensor of `shared` (``[len(losses), *p.shape]`` each), one backward
    pass per loss (a loss without a graph gives a zero row). ``into_others=True`` also backpropagates each loss into
    the ``.grad`` of every parameter outside `shared`, freeing each graph after its last use; the ``.grad`` of `shared`
    is left as it was."""
    live = present(losses)
    kept = kept_graphs(losses, live) if into_others else set()
    rows = []
    for i, loss in enumerate(losses):
        if i not in live:
            grads = [None] * len(shared)
        elif into_others:
            before = [p.grad for p in shared]
            for p in shared:
                p.grad = None
            loss.backward(retain_graph=i in kept)
            grads = [p.grad for p in shared]
            for p, g in zip(shared, before, strict=True):
                p.grad = g
        else:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(shared, grads, strict=True)])
    return [torch.stack(column) for column in zip(*rows, strict=True)]
