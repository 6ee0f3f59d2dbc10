"""Joint training's data: which tasks each optimizer step draws batches from, and the tasks' loaders as one loader."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader

SAMPLING_MODES = ("round_robin", "proportional", "temperature")


def check_sampling(mode: str, tau: float, shares: dict[str, float] | None = None) -> None:
    """Fail with a message naming the key on an unknown ``task_sampling``, a ``task_tau`` that is not > 0, or a
    ``task_share`` outside (0, 1] or below 1 without round_robin."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"task_sampling='{mode}' is not a sampling mode; valid modes: {', '.join(SAMPLING_MODES)}")
    if mode == "temperature" and not (isinstance(tau, (int, float)) and tau > 0):
        raise ValueError(f"task_tau={tau!r}: the sampling temperature must be a number > 0")
    if bad := {t: v for t, v in (shares or {}).items() if not (isinstance(v, (int, float)) and 0 < v <= 1)}:
        raise ValueError(f"task_share {bad}: a task's share of the steps must be a number in (0, 1]")
    if any(v != 1 for v in (shares or {}).values()) and mode != "round_robin":
        raise ValueError(f"task_share={shares}: a task's share of the steps needs task_sampling=round_robin")


class TaskSampler:
    """The batches of each task in one optimizer step, for tasks whose training sets hold ``sizes`` images:
    ``round_robin``, one batch of every task (a task with a share below 1 in that fraction of the steps, evenly);
    ``proportional`` / ``temperature``, as many batches as tasks, each drawn from task t with ``p ~ n_t`` /
    ``n_t**(1/tau)``."""

    def __init__(
        self,
        sizes: dict[str, int],
        mode: str = "round_robin",
        tau: float = 2.0,
        seed: int = 0,
        shares: dict[str, float] | None = None,
    ) -> None:
        """Check the mode, tau and shares, and fix the draw probabilities; draws are reproducible from `seed`."""
        check_sampling(mode, tau, shares)
        self.tasks, self.mode = list(sizes), mode
        self.shares = {t: float((shares or {}).get(t, 1.0)) for t in self.tasks}
        self.step = 0  # the run's step count (global over epochs), which the shares are spread over
        exponent = 1.0 / tau if mode == "temperature" else {"round_robin": 0.0, "proportional": 1.0}[mode]
        weights = np.array([float(sizes[t]) for t in self.tasks]) ** exponent
        self.probabilities = dict(zip(self.tasks, (weights / weights.sum()).tolist(), strict=True))
        self.rng = np.random.default_rng(seed)

    def draw(self) -> dict[str, int]:
        """How many batches of each task the next step holds (tasks without a batch are left out)."""
        if self.mode == "round_robin":
            k, self.step = self.step, self.step + 1
            return {t: 1 for t, share in self.shares.items() if math.floor((k + 1) * share) > math.floor(k * share)}
        drawn = self.rng.choice(len(self.tasks), size=len(self.tasks), p=list(self.probabilities.values()))
        counts = np.bincount(drawn, minlength=len(self.tasks))
        return {t: int(c) for t, c in zip(self.tasks, counts, strict=True) if c}


def endless(loader: DataLoader) -> Iterator[Any]:
    """The batches of `loader`, pass after pass (each pass reshuffles, as every epoch of Ultralytics' loaders does)."""
    while True:
        yield from loader


class JointLoader:
    """Every task's own Ultralytics loader as one loader for Ultralytics' training loop: each item is one step,
    ``{task: [batch, ...]}`` as `task_sampler` draws them; an epoch is as many steps as the largest loader has batches.
    ``sampler``, ``batch_size`` and ``drop_last`` are the largest loader's."""

    def __init__(self, loaders: dict[str, DataLoader], task_sampler: TaskSampler) -> None:
        """Hold the loaders; each one's batches are drawn in order, across epochs."""
        self.loaders, self.task_sampler = loaders, task_sampler
        self.streams: dict[str, Iterator[Any]] = {}

    def __len__(self) -> int:
        """Steps in one epoch."""
        return max(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, list[Any]]]:
        """One epoch of steps."""
        for _ in range(len(self)):
            yield {task: [self.next_batch(task) for _ in range(n)] for task, n in self.task_sampler.draw().items()}

    def next_batch(self, task: str) -> Any:
        """The next batch of `task`'s loader."""
        if task not in self.streams:
            self.streams[task] = endless(self.loaders[task])
        return next(self.streams[task])

    @property
    def largest(self) -> DataLoader:
        """The loader with the most batches (the one an epoch is one pass over)."""
        return max(self.loaders.values(), key=len)

    @property
    def dataset(self) -> ConcatDataset:
        """Every task's images."""
        return ConcatDataset([loader.dataset for loader in self.loaders.values()])

    @property
    def num_workers(self) -> int:
        """Workers of all loaders."""
        return sum(loader.num_workers for loader in self.loaders.values())

    @property
    def sampler(self) -> Any:
        """The largest loader's sampler."""
        return self.largest.sampler

    @property
    def batch_size(self) -> int:
        """The largest loader's batch size."""
        return self.largest.batch_size

    @property
    def drop_last(self) -> bool:
        """Whether the largest loader drops its last incomplete batch."""
        return self.largest.drop_last

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch`: the task sampler at its first step (resumed runs draw alike), DDP samplers at the epoch."""
        self.task_sampler.step = epoch * len(self)
        for loader in self.loaders.values():
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)

    def reset(self) -> None:
        """Restart every loader (after its dataset changed, e.g. mosaic closed)."""
        for loader in self.loaders.values():
            loader.reset()
        self.streams.clear()

    def close(self) -> None:
        """Shut down every loader's workers."""
        for loader in self.loaders.values():
            if hasattr(loader, "close"):
                loader.close()
