"""Loss balancing for joint multi-task training: one method per file, one cfg key per method.

Loss-level methods (``kind == "loss"``) weight the task losses into one total; gradient-level ones combine the task
gradients on the shared parameters (one adapter over TorchJD). Add one to ``BALANCERS`` or with `register_balancer`."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from typing import Any

from yolo_unified.balancing.base import Balancer, task_jacobians
from yolo_unified.balancing.diagnostics import gradient_stats, gramian_stats
from yolo_unified.balancing.dwa import DWA
from yolo_unified.balancing.fixed import Fixed
from yolo_unified.balancing.gradient import GRADIENT_BALANCERS, JacobianBalancer
from yolo_unified.balancing.gradnorm import GradNorm
from yolo_unified.balancing.uncertainty import Uncertainty
from yolo_unified.settings import check_settings

BALANCERS: dict[str, type[Balancer]] = {**{b.key: b for b in (Fixed, Uncertainty, DWA, GradNorm)}, **GRADIENT_BALANCERS}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    """Make `cls` a balancing method, chosen with ``balance=<its key>``; usable as a class decorator."""
    if not cls.key or cls.key in BALANCERS or cls.kind not in {"loss", "gradient"}:
        raise ValueError(f"balancing method {cls.key!r} ({cls.kind}): needs a new key and kind 'loss' or 'gradient'")
    BALANCERS[cls.key] = cls
    return cls


def method_settings(cls: type[Balancer]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The settings a balancing method takes, as type hints by name, their defaults and their meanings: the keyword
    arguments of the method (``tasks`` aside), or, for a gradient-level method, of its TorchJD aggregator (the task
    count aside, which it is given)."""
    gradient = issubclass(cls, JacobianBalancer)
    target = cls.aggregator_type if gradient else cls.__init__
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in inspect.signature(target).parameters.values() if p.kind in kinds]
    params = [p for p in params if p.name not in {"self", "tasks", "n_tasks"}]
    try:
        hints = typing.get_type_hints(target.__init__ if gradient else target)
    except (NameError, TypeError):  # annotations that do not resolve: the values are not type-checked
        hints = {}
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    hints = {p.name: hints.get(p.name, Any) for p in params}
    return hints, {**defaults, **getattr(cls, "defaults", {})}, {name: cls.meanings.get(name, "") for name in hints}


def build_balancer(name: str, tasks: Sequence[str], **settings: Any) -> Balancer:
    """The balancer registered as `name` for `tasks`, with its method's `settings` (keyword arguments), checked as a
    strategy's are: an unknown one fails naming a close one, a value of another type fails naming the setting."""
    if name not in BALANCERS:
        raise ValueError(f"unknown loss-balancing method '{name}'; valid methods: {', '.join(BALANCERS)}")
    hints, defaults, meanings = method_settings(BALANCERS[name])
    return BALANCERS[name](tasks, **check_settings(name, settings, hints, defaults, meanings))


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
