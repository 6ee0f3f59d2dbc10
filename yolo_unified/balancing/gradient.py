"""Gradient-level balancing: one adapter over TorchJD's aggregators (https://github.com/SimplexLab/TorchJD), one
registry key per method, each turning the task losses' Jacobian on the shared parameters into one direction."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, PCGrad, Random, UPGrad, WeightedAggregator
from torchjd.autojac import jac_to_grad

from yolo_unified.balancing.base import Balancer, jacobians_gramian, present_on_any_rank, task_jacobians, trainable
from yolo_unified.ddp import mean_over_ranks

# registry key -> (TorchJD aggregator, our default settings, what it is)
METHODS: dict[str, tuple[type[WeightedAggregator], dict[str, Any], str]] = {
    "pcgrad": (PCGrad, {}, "PCGrad: Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020."),
    "rlw": (
        Random,
        {},
        "RLW: Lin et al., Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning, TMLR "
        "2022. Weights softmax(z), z ~ N(0, I) drawn every step: positive, summing to 1. Unlike the paper's loss-level "
        "form, the heads get their own unweighted gradient.",
    ),
    "cagrad": (
        CAGrad,
        {"c": 0.4},
        "CAGrad: Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021. Setting c (0.4, "
        "as in the paper's NYU-v2 script). Needs pip install 'torchjd[cagrad]'.",
    ),
    "imtlg": (IMTLG, {}, "IMTL-G: Liu et al., Towards Impartial Multi-task Learning, ICLR 2021."),
    "nashmtl": (
        NashMTL,
        {},
        "Nash-MTL: Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022. Settings max_norm (1.0: the "
        "update's norm is clipped to it), update_weights_every, optim_niter. Stateful. Needs pip install "
        "'torchjd[nash_mtl]'.",
    ),
    "alignedmtl": (
        AlignedMTL,
        {},
        "Aligned-MTL: Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023.",
    ),
    "upgrad": (
        UPGrad,
        {},
        "UPGrad: Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024. Needs pip install "
        "'torchjd[quadprog_projector]'.",
    ),
    "mgda": (
        MGDA,
        {},
        "MGDA: Desideri 2012; Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 "
        "(Frank-Wolfe min-norm solver, on the parameters' gradients).",
    ),
}

AGGREGATOR_MEANINGS = {  # setting of a TorchJD aggregator -> what it means (TorchJD's documentation)
    "c": "scale of the radius of the ball around the mean gradient the update is sought in",
    "norm_eps": "small value that avoids a division by zero when normalizing",
    "max_norm": "largest norm of the update (0: not clipped)",
    "update_weights_every": "steps between two computations of the weights (reused in between)",
    "optim_niter": "iterations of the optimization that finds the weights",
    "pref_vector": "preference of the tasks, a torch tensor (Python only; null: equal)",
    "scale_mode": "eigenvalue of the task Gramian that scales the aligned gradients (rmse: the mean)",
    "projector": "the dual-cone projector object (Python only; null: TorchJD's default)",
    "epsilon": "the min-norm solver stops once its step size falls below this",
    "max_iters": "most iterations of the min-norm solver",
}


class JacobianBalancer(Balancer):
    """Aggregate the task gradients on the shared parameters with a TorchJD aggregator (one subclass per method;
    settings go to its constructor).

    :meth:`combine` gives the heads their own task's gradient and adds the aggregated one to the shared ``.grad``;
    ``gramian`` and ``live`` keep the step's Gramian and tasks for the diagnostics. Pass unscaled losses (an AMP scale
    changes Nash-MTL's weights)."""

    kind = "gradient"
    meanings = AGGREGATOR_MEANINGS
    aggregator_type: ClassVar[type[WeightedAggregator]]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, tasks: Sequence[str], **settings: Any) -> None:
        """Check the settings by building the aggregator of every task (a step with fewer tasks gets its own)."""
        super().__init__(tasks)
        self.settings = {**self.defaults, **settings}
        self.gramian, self.live = torch.zeros(len(self.tasks), len(self.tasks)), []
        self.aggregators: dict[tuple[int, ...], WeightedAggregator] = {}
        self.aggregator(tuple(range(len(self.tasks))))

    def aggregator(self, rows: tuple[int, ...]) -> WeightedAggregator:
        """The aggregator of the task rows `rows`, built on first use (one per set of tasks: Nash-MTL's state)."""
        if rows not in self.aggregators:
            settings = dict(self.settings)
            if "n_tasks" in inspect.signature(self.aggregator_type).parameters:
                settings.setdefault("n_tasks", len(rows))
            try:
                self.aggregators[rows] = self.aggregator_type(**settings)
            except ImportError as e:  # CAGrad, Nash-MTL and UPGrad need optional solvers
                raise ImportError(f"balancing method '{self.key}': {e}") from e
        return self.aggregators[rows]

    def combine(
        self, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter]
    ) -> tuple[None, dict[str, float]]:
        """Fill every ``.grad``: the heads' own gradients and the aggregated gradient on `shared`. Only the tasks
        with a batch in the step are aggregated (a zero row would read as a task wanting no change)."""
        ordered = self.ordered(losses)
        params = trainable(shared)
        if not params:
            raise ValueError(f"{self.key}: no shared parameter requires a gradient")
        rows = tuple(present_on_any_rank(ordered))
        weights = dict.fromkeys(self.tasks, 0.0)
        self.gramian, self.live = torch.zeros(len(self.tasks), len(self.tasks)), list(rows)
        if not rows:  # no task in this batch: nothing to do
            return None, weights
        jacobians = mean_over_ranks(task_jacobians([ordered[i] for i in rows], params, into_others=True))
        index = torch.tensor(rows)
        self.gramian[index[:, None], index] = jacobians_gramian(jacobians).cpu()
        if len(rows) == 1:
            for p, jacobian in zip(params, jacobians, strict=True):
                p.grad = jacobian[0] if p.grad is None else p.grad + jacobian[0]
            row_weights = [1.0]
        else:
            for p, jacobian in zip(params, jacobians, strict=True):
                p.jac = jacobian  # where TorchJD's jac_to_grad reads each parameter's Jacobian
            row_weights = jac_to_grad(params, self.aggregator(rows)).tolist()
        weights.update({self.tasks[i]: w for i, w in zip(rows, row_weights, strict=True)})
        return None, weights


GRADIENT_BALANCERS: dict[str, type[JacobianBalancer]] = {
    key: type(
        f"{aggregator.__name__}Balancer",
        (JacobianBalancer,),
        {"key": key, "aggregator_type": aggregator, "defaults": defaults, "__doc__": doc, "__module__": __name__},
    )
    for key, (aggregator, defaults, doc) in METHODS.items()
}
