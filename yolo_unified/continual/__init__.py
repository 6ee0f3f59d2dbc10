"""Forgetting mitigation for sequential multi-task training: one strategy per file, one cfg key per strategy.

A new strategy is a ``Strategy`` subclass in its own file, added to ``STRATEGIES`` below, with its key documented in
``cfg/default.yaml``.
"""

from __future__ import annotations

from typing import Any

from yolo_unified.continual.base import MODULE_PREFIXES, StageContext, Strategy, module_of, stage_samples
from yolo_unified.continual.bn_freeze import BNFreeze
from yolo_unified.continual.ewc import EWC, diagonal_fisher
from yolo_unified.continual.feat_distill import FeatDistill
from yolo_unified.continual.forget_stop import ForgetStop
from yolo_unified.continual.grad_clip import GradClip
from yolo_unified.continual.lr_mult import LRMult
from yolo_unified.continual.lwf import LwF
from yolo_unified.continual.output_reg import OutputReg
from yolo_unified.continual.pseudo_label import PseudoLabel
from yolo_unified.continual.replay import Replay

STRATEGIES: dict[str, type[Strategy]] = {
    s.key: s for s in (LRMult, GradClip, BNFreeze, EWC, LwF, OutputReg, PseudoLabel, FeatDistill, Replay, ForgetStop)
}


def build_strategies(args: Any, context: StageContext) -> list[Strategy]:
    """The strategies switched on in `args` (a value that is not null/False/0/empty), built for `context`."""
    return [cls(getattr(args, key), context) for key, cls in STRATEGIES.items() if getattr(args, key, None)]


__all__ = (
    "MODULE_PREFIXES",
    "STRATEGIES",
    "StageContext",
    "Strategy",
    "build_strategies",
    "diagonal_fisher",
    "module_of",
    "stage_samples",
)
