"""Elastic weight consolidation (Kirkpatrick et al., 2017), online variant (Schwarz et al., 2018)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from yolo_unified.continual.base import Strategy, stage_samples
from yolo_unified.settings import setting


def diagonal_fisher(
    model: torch.nn.Module, samples: Iterable[dict], loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over samples of each sample's squared loss gradient.

    Each sample is its own backward pass. Squaring the gradient of a mini-batch mean instead would shrink the estimate
    by the batch size and drop the per-sample variance that the Fisher is made of.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    for sample in samples:
        model.zero_grad(set_to_none=True)
        loss_fn(model, sample).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {n: f / max(count, 1) for n, f in fisher.items()}


def mean_normalised(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Fisher divided by its mean over every entry: a mean of 1, whatever the task's loss scale."""
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean().clamp_min(1e-30)
    return {n: f / mean for n, f in fisher.items()}


class EWC(Strategy):
    """Penalty ``lam * sum F (theta - theta*)^2`` that anchors the weights the finished tasks' losses are sensitive to.

    cfg: ``{lam: 1.0, samples: images per task for the Fisher, decay: online decay of older Fishers, normalize: True}``.
    At the end of every stage in which it is on, the Fisher of that stage's task is computed at the stage's best
    weights from per-sample gradients and merged into ``memory["ewc"]`` (``F = decay * F_old + F_new``, anchors = the
    latest weights), which the protocol saves with the checkpoints. The penalty applies in later stages.

    With ``normalize`` (the default) each task's Fisher is divided by its mean before merging, so the penalty is
    ``lam`` times a Fisher-weighted sum of squared weight changes whatever the task's loss scale, and ``lam`` means the
    same for every task and dataset: the penalty reaches the size of a task loss (about 1-5) when the weights move by
    about ``1 / sqrt(lam * n_params)`` each; on the 1.35M-parameter model, try ``lam`` in 0.1-100. Raw Fishers (the
    original formulation; ``normalize: False``) span orders of magnitude between tasks and need ``lam`` around 1e3+.
    """

    key = "ewc"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``ewc``."""

        lam: float = setting(1.0, "penalty weight (0.1-100 with normalize)")
        samples: int = setting(64, "images of the stage's task for its Fisher")
        decay: float = setting(1.0, "online decay of the Fishers of earlier stages")
        normalize: bool = setting(True, "each Fisher divided by its mean")

    def setup(self, trainer) -> None:
        """Move the stored Fisher and anchors to the training device."""
        state = self.context.memory.get("ewc")
        self.fisher = {k: v.to(trainer.device) for k, v in self.stored_fisher().items()}
        self.anchor = {k: v.to(trainer.device) for k, v in state["anchor"].items()} if state else {}

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """The EWC penalty of the current weights."""
        if not self.fisher:
            return None
        penalty = sum(
            (self.fisher[n] * (p - self.anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in self.fisher
        )
        penalty = self.settings.lam * penalty
        return penalty, {"ewc": penalty.detach()}

    def stage_end(self, trainer, best: torch.nn.Module) -> None:
        """Add this stage's task Fisher (at the best weights) to the memory, online-decaying older ones."""
        samples = stage_samples(trainer, self.settings.samples, seed=int(trainer.args.seed))
        best.eval()  # fixed BatchNorm statistics: a per-sample gradient of a 1-image batch in train mode is meaningless

        def loss_fn(model, sample):
            return model.loss(sample, model(sample["img"]))[0].sum()

        with torch.enable_grad():
            for p in best.parameters():
                p.requires_grad_(True)
            new = diagonal_fisher(best, samples, loss_fn)
        old = self.stored_fisher()
        if self.normalize:
            new = mean_normalised(new)
        fisher = {n: f.cpu() + (self.settings.decay * old[n] if old else 0) for n, f in new.items()}
        anchor = {n: p.detach().cpu().clone() for n, p in best.named_parameters()}
        self.context.memory["ewc"] = {
            "fisher": fisher,
            "anchor": anchor,
            "tasks": [*self.context.previous, self.context.task],
            "normalized": self.normalize,
        }

    def stored_fisher(self) -> dict[str, torch.Tensor]:
        """The Fisher of the finished tasks in memory, on this stage's scale (a raw one is mean-normalised when
        ``normalize`` is on); empty when none is stored."""
        state = self.context.memory.get("ewc")
        if not state:
            return {}
        raw = self.normalize and not state.get("normalized")  # stored by a stage with normalize: False
        return mean_normalised(state["fisher"]) if raw else state["fisher"]

    @property
    def normalize(self) -> bool:
        """Whether Fishers are mean-normalised (cfg ``normalize``, default True)."""
        return self.settings.normalize
