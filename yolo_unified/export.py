"""Export through Ultralytics' ``Exporter``: named ``det``/``seg``/``cls`` outputs and per-task metadata.

Every format Ultralytics exports goes through the same path. ONNX, TorchScript and OpenVINO are tested here (CPU),
as is INT8 (``quantize=8``) for ONNX Runtime (static QDQ) and OpenVINO (NNCF), calibrated on images of every task of
the multi-task data YAML (`CalibrationImages`). TensorRT (``format=engine``) builds from the ONNX graph below on a
machine with an NVIDIA GPU and is untested in this project (keep seg logits there: ``seg_argmax=True`` emits int64
ids, which TensorRT engines may not output).

OpenVINO runs the layers an export keeps in float at the device's default inference precision, which is bf16 on CPUs
with AMX or AVX512-BF16 (as Ultralytics' AutoBackend, and so predict and val, leave it): there an fp32 OpenVINO model
deviates from PyTorch by up to ~2e-2 relative (tests' tiny model); compiled with ``INFERENCE_PRECISION_HINT=f32`` it
matches to ~1e-6.
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
    """INT8 calibration images from every task of a multi-task data YAML, letterboxed to the export size as predict
    letterboxes (`letterbox`), as ``{"img": uint8 RGB CHW}`` items like Ultralytics' calibration datasets.

    The mix is equal shares: each task of the YAML gives its ``split`` images (Ultralytics' ``split`` key; ``val``
    unless set), ``fraction`` of them (a share, or a count when an int > 1, as Ultralytics reads ``fraction``);
    every task then contributes as many images as the smallest of those counts, spread evenly over its sorted files
    (so class folders are all represented), and the tasks alternate (seg, det, cls, seg, ...).
    """

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
    """Make ``nncf.quantize`` take activation ranges as the min and max over the whole calibration set, correct biases
    on real activations (NNCF's ``BiasCorrection``) instead of its default ``FastBiasCorrection``, and keep the stem
    (`FLOAT_STEM`) in float, besides the head's decoding that Ultralytics keeps there.

    Ranges: NNCF's default averages the per-image min and max, which clips the activations of the images whose range is
    wider than average, and a set drawn from three tasks' images mixes very different ranges. ONNX Runtime's static
    quantization takes global min/max ranges as well.

    Bias correction: ``FastBiasCorrection`` feeds each quantized layer a constant map of its input's per-channel means
    and shifts the bias by the difference to the mean fp32 output. For a 3x3 convolution with zero padding that
    difference is mostly not quantization error: the input's mean is not uniform over the map (its edges, the
    letterbox border), so the mean of conv(x) differs from conv(mean x) in fp32 already, and most on the small stride-16
    and stride-32 maps of the head's tower, whose biases it shifted by 4-10%. Every image then carries the shift, and
    the classifier, which pools the tower's maps into one vector, reads it as a feature: on the HW2 benchmark's model
    this took OpenVINO INT8 top-1 28 points below fp32. ``BiasCorrection`` runs the quantized layers on the
    calibration activations themselves (on a fifth of the calibration set).

    The stem: its two convolutions read the raw pixels at half and quarter resolution; in INT8 they carried the
    largest share of the remaining error (HW2 model, 60 val images: classes equal to fp32's on 58 with them in INT8,
    59 and every image with a clear fp32 call in float; seg pixels 98.5% and 99.1%; top-1 0.700 and 0.717 as fp32's),
    at about 7% more latency (34.8 against 37.3 ms median, 512 px, batch 1, two threads, the two models alternated).
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
    """Ultralytics' ``Exporter`` for the unified model.

    Differences from Ultralytics: the outputs are named ``det``, ``seg`` and ``cls`` (ONNX: each with dynamic axes
    when ``dynamic=True``; OpenVINO: the output tensors' names); ``seg_argmax=True`` bakes the segmentation argmax into
    the graph (``seg`` is then the class map ``(B, H, W)``); the metadata also holds ``task_names``, ``strides`` and
    ``seg_argmax``; ``nms=True`` is refused (the exported boxes are decoded, NMS runs in the predictor as for
    Ultralytics' default exports). INT8 (``quantize=8``) is Ultralytics' own, calibrated on `CalibrationImages` of the
    multi-task data YAML (by default the checkpoint's own training data): for ONNX, ONNX Runtime's static QDQ
    quantization of the convolutions and the linear layer (the rest stays float); for OpenVINO, NNCF with the head's
    decoding (DFL, sigmoid, box arithmetic, softmax) and the stem's two convolutions left float, taking global
    activation ranges and correcting biases on real activations (`nncf_options`). Missing export packages fail before
    any work, naming the extra to install.
    """

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
        """Rewrite Ultralytics' closing hints (``yolo predict task=unified ...``, which cannot load these models) into
        the ``yolo-unified predict`` / ``yolo-unified val`` commands while the export runs."""

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
        """Ultralytics' calibration hook: batches of `CalibrationImages` (every task, equal shares, letterboxed to
        imgsz), as many full export-size batches as the images fill."""
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
        """Ultralytics' OpenVINO export (FP16, or INT8 with NNCF as there) with the output tensors named; INT8 takes
        activation ranges from the whole calibration set, corrects biases on real activations and keeps the stem in
        float (`nncf_options`)."""
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
