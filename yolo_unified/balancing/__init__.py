"""Loss balancing for joint multi-task training: one method per file, one cfg key per method.

Loss-level methods (``kind == "loss"``) weight the task losses into one total that the trainer backpropagates;
gradient-level methods (``kind == "gradient"``) combine the task gradients on the shared parameters themselves
(one adapter over TorchJD's aggregators serves them all). A new method is a ``Balancer`` subclass in its own file,
added to ``BALANCERS`` below (a built-in one) or registered with `register_balancer` (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from yolo_unified.balancing.base import Balancer, task_jacobians
from yolo_unified.balancing.diagnostics import gradient_stats, gramian_stats
from yolo_unified.balancing.dwa import DWA
from yolo_unified.balancing.fixed import Fixed
from yolo_unified.balancing.gradient import GRADIENT_BALANCERS, JacobianBalancer
from yolo_unified.balancing.gradnorm import GradNorm
from yolo_unified.balancing.uncertainty import Uncertainty

BALANCERS: dict[str, type[Balancer]] = {
    **{b.key: b for b in (Fixed, Uncertainty, DWA, GradNorm)},
    **GRADIENT_BALANCERS,
}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    """Make `cls` a balancing method, chosen with ``balance=<its key>``; usable as a class decorator."""
    if not cls.key or cls.key in BALANCERS or cls.kind not in {"loss", "gradient"}:
        raise ValueError(f"balancing method {cls.key!r} ({cls.kind}): needs a new key and kind 'loss' or 'gradient'")
    BALANCERS[cls.key] = cls
    return cls


def build_balancer(name: str, tasks: Sequence[str], **settings: Any) -> Balancer:
    """The balancer registered as `name` for `tasks`, with its method's `settings` (keyword arguments)."""
    if name not in BALANCERS:
        raise ValueError(f"unknown loss-balancing method '{name}'; valid methods: {', '.join(BALANCERS)}")
    return BALANCERS[name](tasks, **settings)


__all__ = (
    "BALANCERS",
    "Balancer",
    "JacobianBalancer",
    "build_balancer",
    "register_balancer",
    "gradient_stats",
    "gramian_stats",
    "task_jacobians",
)
