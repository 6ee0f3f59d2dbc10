"""``UnifiedYOLO``: Ultralytics' ``Model`` interface (train, val, predict, export, benchmark) for unified models."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER, RANK

from yolo_unified import speed, workflows
from yolo_unified.common import TASKS, task_imgsz
from yolo_unified.export import UnifiedExporter
from yolo_unified.files import reading, safe_mode
from yolo_unified.models.unified.predict import UnifiedPredictor
from yolo_unified.models.unified.val import validate
from yolo_unified.nn.tasks import DEFAULT_MODEL_YAML, UnifiedModel, model_yaml_path
from yolo_unified.workflows.base import check_keys, default_data, run_dir, split_cfg
from yolo_unified.workflows.knowledge import describe


class UnifiedYOLO(Model):
    """A unified model: a model YAML, a checkpoint (``best.pt``) or one of its exports (``best.onnx``, ...); each method
    is what ``yolo-unified MODE`` runs.

    >>> UnifiedYOLO("yolov8n-unified.yaml").train(data="datasets/hw2.yaml", cfg="cfg/seq.yaml")  # as the CLI trains
    >>> r = UnifiedYOLO("best.pt")("image.jpg")[0]
    >>> r.boxes, r.semantic_mask, r.probs  # detection (after NMS), class map at the image size, image class"""

    def __init__(self, model: str | Path = DEFAULT_MODEL_YAML, verbose: bool = False):
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

    def _load(self, weights: str, task: str | None = None) -> None:
        """Load a checkpoint or export (a missing or unreadable file fails naming it); a checkpoint predicts at its
        deployment size (`task_imgsz`), not the last stage's."""
        if not Path(weights).exists():
            raise FileNotFoundError(f"model={weights} not found")
        with reading(Path(weights), safe_mode()) if Path(weights).suffix == ".pt" else nullcontext():
            super()._load(weights, task=task)
        if isinstance(self.model, UnifiedModel) and (imgsz := task_imgsz(self.model)):
            self.overrides = {**self.overrides, "imgsz": imgsz}  # a copy: Ultralytics shares it with model.args

    def train(self, **kwargs: Any) -> dict[str, Any]:
        """Train as ``yolo-unified train`` does (`yolo_unified.workflows.train`); afterwards this object holds the final
        best.pt. ``cfg=`` loads a file, the keys given here win over it and over a protocol's stages; unknown keys
        fail. A checkpoint continues from its weights, a model YAML starts anew; ``model=`` among the keys wins over
        this object's."""
        self._check_is_pytorch_model()
        from_file, explicit = split_cfg(kwargs)
        check_keys(from_file)
        check_keys(explicit)
        model: str | None = str(self.ckpt_path or self.cfg)
        if explicit.get("resume") or Path(model).resolve() == model_yaml_path(DEFAULT_MODEL_YAML).resolve():
            model = None  # a resumed run has its own; the default YAML is what trainers build without one
        result = workflows.train(force={"model": model, **explicit}, **from_file)
        if RANK in {-1, 0}:  # as Ultralytics' Model.train: with DDP, rank 0 alone has the final weights for sure
            self._load(result["weights"])
            self.predictor = None  # built for the model before training
        return result

    def val(self, data: str | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """Validate every task the data YAML (default: the built-in data) and the model share (`val.validate`)."""
        check_keys(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        task = kwargs.pop("task", None)
        if task is not None and task not in TASKS:
            raise ValueError(f"task={task} is not a yolo-unified task: use one of {list(TASKS)} (none: every task)")
        save_dir = kwargs.pop("save_dir", None) or run_dir(
            kwargs.pop("project", None), kwargs.pop("name", None), "val", kwargs.get("exist_ok", False)
        )
        if task:
            kwargs["tasks"] = [task]
        return validate(str(self.ckpt_path or self.model_name), data or default_data(), save_dir, **kwargs)

    def export(self, seg_argmax: bool = False, **kwargs: Any) -> str:
        """Export with ``UnifiedExporter`` (Ultralytics' export arguments, plus ``seg_argmax``); return the file."""
        self._check_is_pytorch_model()
        defaults = {"imgsz": task_imgsz(self.model), "batch": 1, "data": None, "device": None, "verbose": False}
        args = {**self.overrides, **defaults, **kwargs, "mode": "export"}
        return UnifiedExporter(overrides=args, _callbacks=self.callbacks, seg_argmax=seg_argmax)(model=self.model)

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int | list[int] = 640) -> Any:
        """Ultralytics' layer summary, then what the checkpoint knows (`workflows.knowledge.describe`: tasks, classes,
        scores, the commands that trained it, stored images); returns Ultralytics' summary."""
        summary = super().info(detailed=detailed, verbose=verbose, imgsz=imgsz)
        if verbose and self.ckpt_path:
            LOGGER.info(describe(self.ckpt_path))
        return summary

    def benchmark(self, **kwargs: Any) -> dict[str, Any]:
        """Size, latency and memory of this checkpoint, its exports and the separate models (`yolo_unified.speed`)."""
        return speed.benchmark(str(self.ckpt_path), self.predict, **kwargs)
