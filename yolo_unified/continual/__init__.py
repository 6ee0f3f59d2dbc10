"""Forgetting mitigation for sequential multi-task training: one strategy per file, one cfg key per strategy.

A new strategy is a ``Strategy`` subclass in its own file: a built-in one is added to ``STRATEGIES`` below with its
key documented in ``cfg/default.yaml``; one from outside the package calls `register_strategy` (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from yolo_unified.continual.base import StageContext, Strategy, stage_samples
from yolo_unified.continual.bn_freeze import BNFreeze
from yolo_unified.continual.ewc import EWC, diagonal_fisher
from yolo_unified.continual.feat_distill import FeatDistill
from yolo_unified.continual.forget_stop import ForgetStop
from yolo_unified.continual.grad_clip import GradClip
from yolo_unified.continual.lr_mult import LRMult
from yolo_unified.continual.lwf import LwF
from yolo_unified.continual.old_distill import OldDistill
from yolo_unified.continual.old_labels import OldLabels
from yolo_unified.continual.output_reg import OutputReg
from yolo_unified.continual.pseudo_label import PseudoLabel
from yolo_unified.continual.replay import Replay
from yolo_unified.defaults import UNIFIED_KEYS, train_keys
from yolo_unified.settings import parse_settings

STRATEGIES: dict[str, type[Strategy]] = {
    s.key: s
    for s in (
        LRMult, GradClip, BNFreeze, EWC, LwF, OutputReg, PseudoLabel, FeatDistill, Replay, ForgetStop, OldLabels,
        OldDistill,
    )
}  # fmt: skip


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make `cls` a strategy: its ``key`` becomes a train key (off by default) that switches it on and holds its
    settings. Usable as a class decorator; a key that is already a train key (Ultralytics' or a strategy's) fails."""
    if not cls.key or cls.key in train_keys():
        raise ValueError(f"strategy key {cls.key!r} is empty or already a train key; give the strategy its own")
    STRATEGIES[cls.key] = cls
    UNIFIED_KEYS[cls.key] = None
    return cls


def switched_on(value: Any) -> bool:
    """Whether a strategy key's value switches it on: anything but null, False, 0 and "" (``{}``: its defaults)."""
    return value is not None and value is not False and value != 0 and value != ""


def build_strategies(args: Any, context: StageContext) -> list[Strategy]:
    """The strategies switched on in `args` (`switched_on`), built for `context`."""
    return [
        cls(getattr(args, key), context) for key, cls in STRATEGIES.items() if switched_on(getattr(args, key, None))
    ]


def check_strategy_settings(keys: dict[str, Any], where: str = "") -> None:
    """Check the settings of every strategy switched on in `keys` (a stage's train keys) before anything trains:
    an unknown setting or a value of the wrong type fails naming the strategy (and `where`, e.g. the stage)."""
    for key, cls in STRATEGIES.items():
        if switched_on(keys.get(key)):
            try:
                parse_settings(cls.Settings, keys[key], key, cls.scalar)
            except ValueError as e:
                raise ValueError(f"{where}{e}") from e


__all__ = (
    "STRATEGIES",
    "StageContext",
    "Strategy",
    "build_strategies",
    "check_strategy_settings",
    "register_strategy",
    "diagonal_fisher",
    "stage_samples",
)
