"""A strategy from outside the package, in one file: an L2 pull of the head towards zero, counting its calls."""

from dataclasses import dataclass

import torch

from yolo_unified.continual import Strategy, register_strategy
from yolo_unified.settings import setting


@register_strategy
class ToyPull(Strategy):
    """cfg: ``toy_pull: {lam: 0.01}``: adds ``lam * |head weights|^2`` to every batch's loss."""

    key = "toy_pull"
    calls: dict[str, int] = {}

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``toy_pull``."""

        lam: float = setting(0.01, "weight of the pull")

    def setup(self, trainer) -> None:
        """Count the stages set up."""
        ToyPull.calls["setup"] = ToyPull.calls.get("setup", 0) + 1

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """The pull on the head's parameters, shown as ``toy`` beside the task loss."""
        ToyPull.calls["loss"] = ToyPull.calls.get("loss", 0) + 1
        head = model.model[-1]
        term = self.settings.lam * sum(p.pow(2).sum() for p in head.parameters())
        return term, {"toy": term.detach()}
