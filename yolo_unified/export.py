"""Export through Ultralytics' ``Exporter``: named ``det``/``seg``/``cls`` outputs and per-task metadata.

Every format Ultralytics exports goes through the same path. ONNX and TorchScript are tested here (CPU); TensorRT
(``format=engine``) builds from the ONNX graph below on a machine with an NVIDIA GPU and is untested in this project
(keep seg logits there: ``seg_argmax=True`` emits int64 ids, which TensorRT engines may not output).
"""

from __future__ import annotations

from copy import deepcopy
from importlib.util import find_spec
from unittest.mock import patch

import torch
import ultralytics.utils.export.engine as export_engine
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import LOGGER, colorstr

OUTPUT_NAMES = ("det", "seg", "cls")  # the order of UnifiedHead's export outputs
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxslim")  # the `export` extra; pip and import names coincide
ONNX_FORMATS = {"onnx", "engine", "tensorrt", "trt"}  # formats Ultralytics builds from the ONNX graph (and aliases)
_torch2onnx = export_engine.torch2onnx  # Ultralytics' own, wrapped by UnifiedExporter.export_onnx


def output_axes(seg_argmax: bool) -> dict[str, dict[int, str]]:
    """Dynamic axes of the three outputs: boxes ``(B, 4+nc, anchors)``, seg logits ``(B, nc_seg, H/8, W/8)`` or the
    class map ``(B, H, W)`` (``seg_argmax``), class probabilities ``(B, nc_cls)``."""
    seg = {0: "batch", 1: "height", 2: "width"} if seg_argmax else {0: "batch", 2: "height", 3: "width"}
    return {"det": {0: "batch", 2: "anchors"}, "seg": seg, "cls": {0: "batch"}}


def check_onnx_packages() -> None:
    """Fail early, with the install command, when an ONNX export package is missing (Ultralytics would pip-install)."""
    if missing := [name for name in ONNX_PACKAGES if find_spec(name) is None]:
        raise ModuleNotFoundError(
            f"ONNX export needs {', '.join(missing)}: pip install 'yolo-unified[export]' (nothing is auto-installed)"
        )


class UnifiedExporter(Exporter):
    """Ultralytics' ``Exporter`` for the unified model.

    Differences from Ultralytics: the ONNX graph outputs are named ``det``, ``seg`` and ``cls`` (each with dynamic axes
    when ``dynamic=True``); ``seg_argmax=True`` bakes the segmentation argmax into the graph (``seg`` is then the class
    map ``(B, H, W)``); the metadata also holds ``task_names``, ``strides`` and ``seg_argmax``; ``nms=True`` is refused
    (the exported boxes are decoded, NMS runs in the predictor as for Ultralytics' default exports).
    """

    def __init__(
        self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None, seg_argmax: bool = False
    ):
        """Ultralytics' arguments, plus ``seg_argmax``: export the segmentation class map instead of its logits."""
        self.seg_argmax = bool(seg_argmax)
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_export_start", UnifiedExporter.add_metadata)

    def __call__(self, model: torch.nn.Module) -> str:
        """Export a unified model and return the exported file."""
        if getattr(model, "task", None) != "unified":
            raise ValueError(f"UnifiedExporter exports yolo-unified models, got task '{getattr(model, 'task', None)}'")
        if self.args.nms:
            LOGGER.warning("nms=True is not supported for yolo-unified exports; NMS runs in the predictor.")
            self.args.nms = None
        if str(self.args.format).lower() in ONNX_FORMATS:
            check_onnx_packages()
        model = deepcopy(model)
        model.model[-1].bake_argmax = self.seg_argmax
        return super().__call__(model)

    def add_metadata(self) -> None:
        """``on_export_start`` hook: add what the unified predictor and validators read to Ultralytics' metadata."""
        self.metadata["task_names"] = self.model.task_names
        self.metadata["strides"] = [int(s) for s in self.model.stride.tolist()]
        self.metadata["seg_argmax"] = self.seg_argmax
        self.metadata["outputs"] = list(OUTPUT_NAMES)

    def export_onnx(self, prefix: str = colorstr("ONNX:")) -> str:
        """Ultralytics' ONNX export (opset, onnxslim, metadata, FP16/INT8 all as there) with our output names."""
        with patch.object(export_engine, "torch2onnx", self._torch2onnx):
            return super().export_onnx(prefix=prefix)

    def _torch2onnx(self, model, im, output_file, opset, input_names, output_names, dynamic) -> str:
        """Ultralytics' ``torch2onnx`` with the three outputs named, and given dynamic axes when the input has them."""
        if dynamic:  # Ultralytics gives the input's axes (and those of an "output0" this graph does not have)
            dynamic = {input_names[0]: dynamic[input_names[0]], **output_axes(self.seg_argmax)}
        names = list(OUTPUT_NAMES)
        return _torch2onnx(model, im, output_file, opset, input_names=input_names, output_names=names, dynamic=dynamic)
