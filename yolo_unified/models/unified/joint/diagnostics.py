"""Joint training's diagnostics: each epoch's means of the task losses, balancer weights and task-gradient statistics,
written to ``diagnostics.csv`` in the run folder and plotted beside it (``diagnostics.png``)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from ultralytics.utils import plt_settings

from yolo_unified.balancing import Balancer, gradient_stats, gramian_stats

DIAGNOSTICS = "diagnostics.csv"  # per-epoch balancing diagnostics in the run folder (plotted to diagnostics.png)
GRADIENT_STATS_STEPS = 1  # steps per epoch (the first ones) on which the task gradients are measured
PANELS = {  # diagnostics.png: one panel per group of columns
    "loss": "task loss (per image)",
    "weight": "balancer weight",
    "grad_norm": "gradient norm, shared parameters",
    "cos": "cosine of task gradients",
}


class EpochMeans:
    """Means of named values over an epoch's steps, each over the steps that measured it (NaN is not a measure)."""

    def __init__(self) -> None:
        """No step yet."""
        self.steps = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        """Count one step and add its values."""
        self.steps += 1
        for key, value in values.items():
            if np.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, key: str, default: float = float("nan")) -> float:
        """The mean of `key`, or `default` if no step measured it."""
        return self.sums[key] / self.counts[key] if key in self.counts else default


def step_gradient_stats(
    means: EpochMeans, losses: dict[str, torch.Tensor], shared: Sequence[torch.nn.Parameter], balancer: Balancer
) -> dict[str, float]:
    """The task gradients' norms and cosines on the `shared` parameters, before the balancer combines `losses`: for
    a loss-level method on the epoch's first ``GRADIENT_STATS_STEPS`` steps (`means` counts them; `gradient_stats`,
    a backward pass per task), nothing otherwise (a gradient-level method's come from `combined_gradient_stats`)."""
    if balancer.kind == "gradient" or means.steps >= GRADIENT_STATS_STEPS:
        return {}
    return gradient_stats(losses, shared)


def combined_gradient_stats(balancer: Balancer, stats: dict[str, float]) -> dict[str, float]:
    """After the balancer combined a step: a gradient-level method's task-gradient norms and cosines, on every step,
    from the Gramian of the task gradients it computed anyway (`gramian_stats`, no extra backward pass); `stats`
    (measured before) otherwise."""
    if balancer.kind != "gradient":
        return stats
    return gramian_stats(balancer.tasks, balancer.gramian, balancer.live)


def step_values(
    losses: dict[str, torch.Tensor],
    items: dict[str, dict[str, float]],
    weights: dict[str, float],
    stats: dict[str, float],
) -> dict[str, float]:
    """One step's diagnostics as `EpochMeans` keeps them: ``loss/<task>`` (the tasks with a batch in the step, those
    with `items`), ``weight/<task>``, ``item/<task>/<name>`` and the gradient statistics."""
    return {
        **{f"loss/{t}": losses[t].item() for t in items},
        **{f"weight/{t}": w for t, w in weights.items()},
        **{f"item/{t}/{n}": v for t, values in items.items() for n, v in values.items()},
        **stats,
    }


def task_loss_means(means: EpochMeans, tasks: Sequence[str]) -> dict[str, float]:
    """Each task's mean loss over the epoch's steps that had the task (NaN for a task no step had)."""
    return {t: means.mean(f"loss/{t}") for t in tasks}


def item_means(means: EpochMeans, names: Sequence[str]) -> dict[str, float]:
    """Each loss item ``<task>/<name>`` as its mean over the epoch's steps that had its task (0 until one had it)."""
    return {name: means.mean(f"item/{name}", 0.0) for name in names}


def write_diagnostics(file: Path, epoch: int, means: EpochMeans, tasks: Sequence[str]) -> None:
    """Append the 1-based `epoch`'s row to `file` (its header first, in a new file) and plot the file beside it."""
    keys = [f"{group}/{t}" for group in ("loss", "weight", "grad_norm") for t in tasks]
    keys += [f"cos/{a}-{b}" for a, b in combinations(tasks, 2)]
    new = not file.is_file()
    with open(file, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", *keys])
        writer.writerow([epoch, *(f"{means.mean(k):.6g}" for k in keys)])
    plot_diagnostics(file)


@plt_settings()
def plot_diagnostics(file: Path) -> None:
    """Plot diagnostics.csv beside it: task losses, balancer weights, gradient norms and cosines per epoch."""
    with open(file) as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2), tight_layout=True)
    epochs = [row["epoch"] for row in rows]
    for ax, (group, title) in zip(axes, PANELS.items(), strict=True):
        for key in (k for k in rows[0] if k.startswith(f"{group}/")):
            ax.plot(epochs, [row[key] for row in rows], marker="o", label=key.split("/", 1)[1])
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    axes[-1].axhline(0.0, color="grey", linewidth=0.5)
    fig.savefig(file.with_suffix(".png"), dpi=120)
    plt.close(fig)
