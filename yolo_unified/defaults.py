"""What yolo-unified sets for its own runs only, so that importing it changes nothing for plain Ultralytics: its keys
(cfg/default.yaml's and registered strategies', `UNIFIED_KEYS`) beside Ultralytics' defaults (`unified_cfg`,
`train_keys`; left out for the validators, predictor and exporter: `without_unified_keys`), and its CPU thread count
(`unified_threads`, Ultralytics' restored after)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.resources import files
from types import SimpleNamespace
from typing import Any

import torch
import ultralytics.utils.torch_utils as torch_utils
from ultralytics.cfg import cfg2dict
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, YAML

UNIFIED_KEYS: dict[str, Any] = YAML.load(files("yolo_unified.cfg") / "default.yaml")  # key -> default
THREADS_VARIABLE = "YOLO_UNIFIED_THREADS"  # the environment variable that sets a unified run's CPU threads


def train_keys() -> set[str]:
    """Every key a unified run takes: Ultralytics' and the package's."""
    return {*DEFAULT_CFG_DICT, *UNIFIED_KEYS}


def unified_cfg(cfg: str | dict | SimpleNamespace = DEFAULT_CFG) -> dict[str, Any]:
    """A unified trainer's defaults: `cfg` (Ultralytics' unless given) with the package's keys at their defaults."""
    return {**UNIFIED_KEYS, **cfg2dict(cfg)}


def without_unified_keys(args: dict | SimpleNamespace | None) -> dict[str, Any] | None:
    """`args` without the package's own keys, for Ultralytics' key check of a validator, predictor or exporter."""
    return None if args is None else {k: v for k, v in cfg2dict(args).items() if k not in UNIFIED_KEYS}


def unified_threads_count() -> int:
    """A unified run's CPU threads: every core (Ultralytics leaves one idle: 1 thread on a 2-core machine, where
    training is about 1.7x slower), or ``YOLO_UNIFIED_THREADS``."""
    return int(os.environ.get(THREADS_VARIABLE, os.cpu_count() or 1))


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run torch on `threads` CPU threads, also through Ultralytics' ``select_device`` (trainer, validator, exporter,
    predictor), which sets torch's count to its ``NUM_THREADS``; restore both afterwards."""
    kept = torch.get_num_threads(), torch_utils.NUM_THREADS
    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch_utils.NUM_THREADS = kept[1]
        torch.set_num_threads(kept[0])


def unified_threads() -> AbstractContextManager[None]:
    """`pinned_threads` at a unified run's count (`unified_threads_count`)."""
    return pinned_threads(unified_threads_count())
