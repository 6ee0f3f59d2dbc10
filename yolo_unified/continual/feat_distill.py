"""Feature distillation: keep the shared FPN features close to those of the model before the stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from yolo_unified.continual.base import Strategy
from yolo_unified.settings import setting


def pod_spatial(x: torch.Tensor) -> torch.Tensor:
    """PODNet's spatial pooling (Douillard et al., 2020): squared activations summed over width and over height,
    flattened per image and L2-normalised, ``(B, C * (H + W))``."""
    a = x.pow(2)
    return F.normalize(torch.cat([a.sum(-1).flatten(1), a.sum(-2).flatten(1)], 1), dim=1)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between two feature maps ``(B, C, H, W)``, averaged over images (zero when they are equal).

    ``l2``: mean squared difference; ``cosine``: one minus the cosine similarity of the channel vectors, averaged over
    positions; ``pod``: Euclidean distance of the PODNet width/height pooled descriptors.
    """
    if kind == "l2":
        return F.mse_loss(student, teacher)
    if kind == "cosine":  # 1 - cos as half the squared distance of the unit vectors: 0 for equal maps at any scale
        return 0.5 * (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()
    if kind == "pod":
        return (pod_spatial(student) - pod_spatial(teacher)).norm(dim=1).mean()
    raise ValueError(f"feat_distill: distance must be one of l2, cosine, pod; got {kind!r}")


class FeatDistill(Strategy):
    """cfg: ``{weight: 1.0, distance: l2}`` (``l2``, ``cosine`` or ``pod``).

    The FPN outputs of every level (the features the shared tower and every task head read) are pulled toward those
    of the model the stage starts from (``StageContext.teacher``) on the current batch, averaged over levels and
    weighted by ``weight``. Unlike ``lwf``, it protects what every finished task reads at once, whatever the heads do.
    """

    key = "feat_distill"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``feat_distill``."""

        weight: float = setting(1.0, "weight of the feature distance")
        distance: Literal["l2", "cosine", "pod"] = setting("l2", "how feature maps are compared")

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted mean distance of the FPN levels between the current model and the teacher."""
        if self.context.teacher(batch["img"].device) is None:
            return None
        target = self.context.teacher_outputs(batch["img"])[-1]["feats"]
        levels = [feature_distance(s, t, self.settings.distance) for s, t in zip(preds["feats"], target, strict=True)]
        term = self.settings.weight * torch.stack(levels).mean()
        return term, {"feat_dist": term.detach()}
