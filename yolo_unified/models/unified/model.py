"""``UnifiedYOLO``: Ultralytics' ``Model`` interface (predict, export, val) for unified checkpoints and exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.engine.model import Model

from yolo_unified import engine
from yolo_unified.export import UnifiedExporter
from yolo_unified.models.unified.predict import UnifiedPredictor
from yolo_unified.nn.tasks import UnifiedModel


class UnifiedYOLO(Model):
    """A unified model (``best.pt``) or one of its exports (``best.onnx``, ``best.torchscript``, ...).

    >>> r = UnifiedYOLO("best.pt")("image.jpg")[0]
    >>> r.boxes, r.semantic_mask, r.probs  # detection (after NMS), class map at the image size, image class

    Prediction is Ultralytics' ``Model.predict`` (sources, ``stream=True``, ``save=True``, ``conf``, ...), with
    ``UnifiedPredictor``; ``export`` uses ``UnifiedExporter``; ``val`` validates every task of a data YAML.
    """

    def __init__(self, model: str | Path = "best.pt", verbose: bool = False):
        """Load a ``.pt`` checkpoint or an exported model of task ``unified``."""
        super().__init__(model, task="unified", verbose=verbose)
        if self.task != "unified":
            raise ValueError(f"'{model}' is a '{self.task}' model, not a yolo-unified one")

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """The classes Ultralytics' ``Model`` looks up for the ``unified`` task."""
        return {"unified": {"model": UnifiedModel, "predictor": UnifiedPredictor}}

    def export(self, seg_argmax: bool = False, **kwargs: Any) -> str:
        """Export with ``UnifiedExporter`` (Ultralytics' export arguments, plus ``seg_argmax``); return the file."""
        self._check_is_pytorch_model()
        defaults = {"imgsz": self.model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
        args = {**self.overrides, **defaults, **kwargs, "mode": "export"}
        return UnifiedExporter(overrides=args, _callbacks=self.callbacks, seg_argmax=seg_argmax)(model=self.model)

    def val(self, data: str | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """Validate every task the data YAML and the model share (``yolo_unified.engine.val``)."""
        return engine.val(model=str(self.ckpt_path), data=data, **kwargs)
