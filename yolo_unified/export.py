"""Export through Ultralytics' ``Exporter``: named ``det``/``seg``/``cls`` outputs and per-task metadata.

ONNX, TorchScript, OpenVINO and INT8 (``quantize=8``: ONNX Runtime's static QDQ, OpenVINO's NNCF, calibrated on every
task's images) are tested on the CPU; TensorRT (``format=engine``) builds from the same ONNX graph, untested here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from unittest.mock import patch

import cv2
import numpy as np
import torch
import ultralytics.utils.export.engine as export_engine
import ultralytics.utils.export.openvino as export_openvino
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.data.build import InfiniteDataLoader, build_dataloader
from ultralytics.data.utils import get_split_fraction
from ultralytics.engine.exporter import Exporter, export_formats
from ultralytics.utils import LOGGER, colorstr

from yolo_unified.data.config import check_heads, image_files, load_data_config, task_data, task_names
from yolo_unified.data.transforms import letterbox
from yolo_unified.defaults import unified_threads, without_unified_keys

OUTPUT_NAMES = ("det", "seg", "cls")  # the order of UnifiedHead's export outputs
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxslim")  # the `export` extra; pip and import names coincide
OPENVINO_PACKAGES = ("openvino",)  # the `export` extra; INT8 also needs NNCF
INT8_PACKAGES = ("nncf",)  # what OpenVINO INT8 adds (ONNX Runtime quantizes ONNX models itself)
ONNX_FORMATS = {"onnx", "engine", "tensorrt", "trt"}  # formats Ultralytics builds from the ONNX graph (and aliases)
_torch2onnx = export_engine.torch2onnx  # Ultralytics' own, wrapped by UnifiedExporter.export_onnx
_torch2openvino = export_openvino.torch2openvino  # Ultralytics' own, wrapped by UnifiedExporter.export_openvino
FORMAT_ARGS = dict(zip(export_formats()["Argument"], export_formats()["Arguments"], strict=True))  # format: its keys
FLOAT_STEM = tuple(f"__module.model.{i}{sep}" for i in (0, 1) for sep in "./")  # OpenVINO ops of layers 0-1
ULTRALYTICS_HINT = re.compile(r"yolo (predict|val) task=unified\b")  # Ultralytics' closing hints name `yolo`


def output_axes(seg_argmax: bool) -> dict[str, dict[int, str]]:
    """Dynamic axes of the three outputs: boxes ``(B, 4+nc, anchors)``, seg logits ``(B, nc_seg, H/8, W/8)`` or the
    class map ``(B, H, W)`` (``seg_argmax``), class probabilities ``(B, nc_cls)``."""
    seg = {0: "batch", 1: "height", 2: "width"} if seg_argmax else {0: "batch", 2: "height", 3: "width"}
    return {"det": {0: "batch", 2: "anchors"}, "seg": seg, "cls": {0: "batch"}}


def check_packages(packages: tuple[str, ...], what: str) -> None:
    """Fail early, with the install command, when a package `what` needs is missing (Ultralytics would pip-install)."""
    if missing := [name for name in packages if find_spec(name) is None]:
        raise ModuleNotFoundError(
            f'{what} needs {", ".join(missing)}: pip install "yolo-unified[export]" (nothing is auto-installed)'
        )


def check_onnx_packages() -> None:
    """Fail early when an ONNX export package (onnx, onnxruntime, onnxslim) is missing."""
    check_packages(ONNX_PACKAGES, "ONNX export")


class CalibrationImages(torch.utils.data.Dataset):
    """INT8 calibration images of every task of a multi-task data YAML, letterboxed as predict does, as
    ``{"img": uint8 RGB CHW}`` items. Each task gives ``fraction`` of its ``split`` images (a share, or a count when
    an int > 1), cut to the smallest task's count, spread over its sorted files; the tasks alternate."""

    def __init__(self, data: str, imgsz: list[int], split: str = "val", fraction: float | list = 1.0):
        """List the images of every task of `data` and pick the mix (nothing is read yet)."""
        cfg = load_data_config(data)
        fraction = get_split_fraction(fraction, split) if isinstance(fraction, list) else fraction
        fraction = float(fraction) if fraction in {0, 1} else fraction  # 1 means all of them, as in Ultralytics
        tasks = {t: image_files(task_data(cfg, t, splits=(split,))[split]) for t in cfg["tasks"]}
        if empty := [t for t, files in tasks.items() if not files]:
            raise FileNotFoundError(f"{data}: no {split} images for INT8 calibration in {', '.join(empty)}")
        n = min(max(1, fraction if isinstance(fraction, int) else round(len(f) * fraction)) for f in tasks.values())
        picked = [[files[(2 * i + 1) * len(files) // (2 * n)] for i in range(n)] for files in tasks.values()]
        self.files = [f for row in zip(*picked, strict=True) for f in row]
        self.imgsz = list(imgsz)
        self.mix = f"{n} {split} images of each of {', '.join(tasks)} ({len(self.files)} in all)"

    def __len__(self) -> int:
        """Number of calibration images."""
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Image `i`, letterboxed, as a uint8 RGB CHW tensor."""
        im = cv2.imread(str(self.files[i]))
        if im is None:
            raise FileNotFoundError(f"INT8 calibration image {self.files[i]} could not be read")
        boxed = letterbox(im, self.imgsz)[0][..., ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
        return {"img": torch.from_numpy(np.ascontiguousarray(boxed))}


@contextmanager
def nncf_options() -> Iterator[None]:
    """Make ``nncf.quantize`` take global min/max activation ranges (its default averages per-image ranges, which
    clips a mix of three tasks' images), correct biases on real activations and keep the stem (`FLOAT_STEM`) in float.

    Measured on the HW2 model: ``FastBiasCorrection`` (the default) shifts the tower's stride-16/32 biases by 4-10%
    (zero padding and the letterbox border make the mean of conv(x) differ from conv(mean x)), which the pooled
    classifier reads as a feature: top-1 28 points below fp32. The INT8 stem (60 val images): classes equal to fp32's
    on 58 (float stem: 59), seg pixels 98.5% (99.1%), top-1 0.700 (0.717, as fp32); the float stem costs ~7% latency
    (37.3 against 34.8 ms median, 512 px, batch 1, two threads).
    """
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    params = nncf.AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    quantize = nncf.quantize

    def quantize_with_options(model: Any, *args: Any, ignored_scope: Any = None, **kwargs: Any) -> Any:
        scope = ignored_scope or nncf.IgnoredScope()
        stem = [
            op.get_friendly_name() for op in model.get_ordered_ops() if op.get_friendly_name().startswith(FLOAT_STEM)
        ]
        scope = nncf.IgnoredScope(
            names=[*scope.names, *stem], patterns=scope.patterns, types=scope.types, subgraphs=scope.subgraphs
        )
        kwargs = {"advanced_parameters": params, "fast_bias_correction": False, **kwargs}
        return quantize(model, *args, ignored_scope=scope, **kwargs)

    with patch.object(nncf, "quantize", quantize_with_options):
        yield


class UnifiedExporter(Exporter):
    """Ultralytics' ``Exporter`` for the unified model: outputs named ``det``, ``seg``, ``cls``; ``seg_argmax=True``
    bakes the segmentation argmax in (``seg`` is then ``(B, H, W)``); ``task_names``, ``strides`` and ``seg_argmax`` in
    the metadata; ``nms=True`` refused (NMS runs in the predictor). INT8 is Ultralytics', calibrated on
    `CalibrationImages` of the data YAML (default: the checkpoint's training data). Missing packages fail first."""

    def __init__(
        self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None, seg_argmax: bool = False
    ):
        """Ultralytics' arguments, plus ``seg_argmax``: export the segmentation class map instead of its logits."""
        self.seg_argmax = bool(seg_argmax)
        super().__init__(cfg, without_unified_keys(overrides), _callbacks)  # the package's own keys left out
        self.add_callback("on_export_start", UnifiedExporter.add_metadata)

    def __call__(self, model: torch.nn.Module) -> str:
        """Export a unified model and return the exported file."""
        if getattr(model, "task", None) != "unified":
            raise ValueError(f"UnifiedExporter exports yolo-unified models, got task '{getattr(model, 'task', None)}'")
        if self.args.nms:
            LOGGER.warning("nms=True is not supported for yolo-unified exports; NMS runs in the predictor.")
            self.args.nms = None
        fmt = str(self.args.format).lower()
        if fmt in ONNX_FORMATS:
            check_onnx_packages()
        elif fmt == "openvino":
            check_packages(OPENVINO_PACKAGES + (INT8_PACKAGES if self.args.quantize == 8 else ()), "OpenVINO export")
        fmt_keys = FORMAT_ARGS.get("engine" if fmt in ONNX_FORMATS - {"onnx"} else fmt, ())
        if self.args.quantize == 8 and "data" in fmt_keys:  # a format that calibrates INT8 on images
            self.args.data = self.calibration_data(model)
        model = deepcopy(model)
        model.model[-1].bake_argmax = self.seg_argmax
        with self.unified_hints(), unified_threads():
            return super().__call__(model)

    def calibration_data(self, model: torch.nn.Module) -> str:
        """The data YAML INT8 calibration reads: ``data=``, else the one the checkpoint was trained on (its args)."""
        args = getattr(model, "args", None)
        trained_on = args.get("data") if isinstance(args, dict) else getattr(args, "data", None)
        data = self.args.data or trained_on
        if not data:
            raise ValueError(
                "INT8 export calibrates on images of every task: set data=path/to/data.yaml (a yolo-unified data "
                "YAML); the checkpoint records no training data"
            )
        if not Path(data).is_file():
            origin = "data=" if self.args.data else "the checkpoint's training data"
            raise FileNotFoundError(
                f"INT8 calibration data ({origin}) '{data}' not found: set data=path/to/data.yaml (a yolo-unified data "
                "YAML)"
            )
        cfg = load_data_config(data)  # a clear error now for a YAML without task sections, not after the FP32 export
        check_heads(model.task_names, task_names(cfg), self.args.model or "the model", data)
        return str(data)

    @contextmanager
    def unified_hints(self) -> Iterator[None]:
        """Ultralytics' closing hints (``yolo predict task=unified``) as ``yolo-unified`` commands while exporting."""

        def rewrite(record: logging.LogRecord) -> bool:
            if isinstance(record.msg, str):
                record.msg = ULTRALYTICS_HINT.sub(r"yolo-unified \1", record.msg)
            return True

        LOGGER.addFilter(rewrite)
        try:
            yield
        finally:
            LOGGER.removeFilter(rewrite)

    def add_metadata(self) -> None:
        """``on_export_start`` hook: add what the unified predictor and validators read to Ultralytics' metadata."""
        self.metadata["task_names"] = self.model.task_names
        self.metadata["task_imgsz"] = dict(getattr(self.model, "task_imgsz", None) or {})  # the tasks it learned
        self.metadata["strides"] = [int(s) for s in self.model.stride.tolist()]
        self.metadata["seg_argmax"] = self.seg_argmax
        self.metadata["outputs"] = list(OUTPUT_NAMES)

    def get_int8_calibration_dataloader(self, prefix: str = "") -> InfiniteDataLoader:
        """Ultralytics' calibration hook: full batches of `CalibrationImages`."""
        dataset = CalibrationImages(self.args.data, self.imgsz, self.args.split or "val", self.args.fraction)
        LOGGER.info(f"{prefix} INT8 calibration on {dataset.mix} of {self.args.data}, letterboxed to {self.imgsz}")
        if len(dataset) < 300:
            LOGGER.warning(f"{prefix} >300 images recommended for INT8 calibration, found {len(dataset)}.")
        batch = min(self.args.batch, len(dataset))
        return build_dataloader(dataset, batch=batch, workers=0, shuffle=False, drop_last=True)

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

    def export_openvino(self, prefix: str = colorstr("OpenVINO:")) -> str:
        """Ultralytics' OpenVINO export with the output tensors named; INT8 with `nncf_options`."""
        with (
            patch.object(export_openvino, "torch2openvino", self._torch2openvino),
            nncf_options() if self.args.quantize == 8 else nullcontext(),
        ):
            return super().export_openvino(prefix=prefix)

    @staticmethod
    def _torch2openvino(*args: Any, **kwargs: Any) -> Any:
        """Ultralytics' ``torch2openvino``, then the model's three outputs named ``det``, ``seg``, ``cls``."""
        ov_model = _torch2openvino(*args, **kwargs)
        for output, name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
            output.get_tensor().set_names({name})
        return ov_model
