"""``UnifiedYOLO``: Ultralytics' ``Model`` interface (train, predict, export, val) for unified models and exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.engine.model import Model

from yolo_unified import cli, engine
from yolo_unified.export import UnifiedExporter
from yolo_unified.models.unified.predict import UnifiedPredictor
from yolo_unified.nn.tasks import DEFAULT_MODEL_YAML, UnifiedModel, model_yaml_path


class UnifiedYOLO(Model):
    """A unified model: a model YAML, a checkpoint (``best.pt``) or one of its exports (``best.onnx``, ...).

    >>> UnifiedYOLO("yolov8n-unified.yaml").train(data="datasets/hw2.yaml", cfg="cfg/seq.yaml")  # as the CLI trains
    >>> r = UnifiedYOLO("best.pt")("image.jpg")[0]
    >>> r.boxes, r.semantic_mask, r.probs  # detection (after NMS), class map at the image size, image class

    ``train`` runs ``yolo-unified train``'s code; prediction is Ultralytics' ``Model.predict`` (sources,
    ``stream=True``, ``save=True``, ``conf``, ...), with ``UnifiedPredictor``; ``export`` uses ``UnifiedExporter``;
    ``val`` validates every task of a data YAML.
    """

    def __init__(self, model: str | Path = "best.pt", verbose: bool = False):
        """Build a model from a unified model YAML, or load a ``.pt`` checkpoint or an export of task ``unified``."""
        super().__init__(model, task="unified", verbose=verbose)
        if self.task != "unified":
            raise ValueError(f"'{model}' is a '{self.task}' model, not a yolo-unified one")

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """The classes Ultralytics' ``Model`` looks up for the ``unified`` task."""
        return {"unified": {"model": UnifiedModel, "predictor": UnifiedPredictor}}

    def _new(self, cfg: str, task: str | None = None, verbose: bool = False) -> None:
        """Build a new model from a model YAML path or the name of a packaged one (``yolov8n-unified.yaml``)."""
        super()._new(str(model_yaml_path(cfg)), task=task, verbose=verbose)

    def train(self, **kwargs: Any) -> dict[str, Any]:
        """Train this model as ``yolo-unified train`` does (`yolo_unified.cli.train`); return what it returns.

        Keys as on the command line: ``cfg=`` loads a file, and the keys given here win over it and over a protocol's
        per-stage keys; without ``task=`` or a protocol, the recommended one runs (cfg/seq.yaml, or
        cfg/seq-pretrained.yaml with ``pretrained=`` weights). A checkpoint continues from its weights, a model YAML
        starts from new ones (``resume=`` continues a run with its own). Afterwards this object holds the final
        best.pt, for ``predict``, ``val`` and ``export``.
        """
        self._check_is_pytorch_model()
        model: str | None = str(self.ckpt_path or self.cfg)
        if kwargs.get("resume") or Path(model).resolve() == model_yaml_path(DEFAULT_MODEL_YAML).resolve():
            model = None  # a resumed run has its own; the default YAML is what trainers build without one
        result = cli.train({"model": model, **kwargs})
        self._load(result["weights"])
        self.predictor = None  # built for the model before training
        return result

    def export(self, seg_argmax: bool = False, **kwargs: Any) -> str:
        """Export with ``UnifiedExporter`` (Ultralytics' export arguments, plus ``seg_argmax``); return the file."""
        self._check_is_pytorch_model()
        defaults = {"imgsz": self.model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
        args = {**self.overrides, **defaults, **kwargs, "mode": "export"}
        return UnifiedExporter(overrides=args, _callbacks=self.callbacks, seg_argmax=seg_argmax)(model=self.model)

    def val(self, data: str | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """Validate every task the data YAML and the model share (``yolo_unified.engine.val``)."""
        return engine.val(model=str(self.ckpt_path), data=data, **kwargs)
