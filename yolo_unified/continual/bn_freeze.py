"""BatchNorm freezing: running statistics stay as they were when the stage started."""

from __future__ import annotations

import torch

from yolo_unified.continual.base import Strategy


class BNFreeze(Strategy):
    """cfg: ``bn_freeze: True``. Ultralytics calls ``model.train()`` at every epoch start, so this re-applies each time.

    The affine BatchNorm weights still train (unless their module's learning rate is 0); only the statistics that
    earlier tasks (or the task's old classes, in a stage that adds classes) were normalised with are held. A stage with
    nothing learned before it (a protocol's first) keeps its statistics learning: a new model's are only their initial
    values.
    """

    key = "bn_freeze"

    def after_model_train(self, trainer) -> None:
        """Put every BatchNorm layer back in eval mode."""
        if self.context.previous or self.context.old_classes:
            for m in trainer.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
