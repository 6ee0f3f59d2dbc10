"""Prediction: one forward pass gives one Results object with boxes, the semantic map and the image class."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.engine.results import Results
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.utils import DEFAULT_CFG, ops
from ultralytics.utils.plotting import Annotator, colors

from yolo_unified.common import TASKS
from yolo_unified.data.config import check_images
from yolo_unified.data.transforms import IGNORE, RatioPad, letterbox
from yolo_unified.defaults import unified_threads, without_unified_keys
from yolo_unified.models.unified.val import model_task_names
from yolo_unified.nn.modules import upsample_logits

BACKGROUND = 0  # the seg class the overlay leaves untinted (class 0 of the seg names)


def tinted(im: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """`im` with each pixel of `mask` blended with its class's colour; background and ignored pixels kept."""
    ids = np.unique(mask)  # class ids present, ascending
    palette = np.array([colors(int(i), True) for i in ids], im.dtype)
    blend = cv2.addWeighted(im, 1 - alpha, palette[np.searchsorted(ids, mask)], alpha, 0)
    plain = np.isin(mask, (BACKGROUND, IGNORE))
    blend[plain] = im[plain]
    return blend


def source_images(source: Any) -> list[Path]:
    """The image files a predict `source` names: a file, a list of files, or a folder's images (not its subfolders')."""
    paths = [Path(s) for s in (source if isinstance(source, (list, tuple)) else [source]) if isinstance(s, (str, Path))]
    files = [f for p in paths if p.is_dir() for f in sorted(p.glob("*.*"))] + [p for p in paths if p.is_file()]
    return [f for f in files if f.suffix[1:].lower() in IMG_FORMATS]


def semantic_map(
    seg: torch.Tensor, input_hw: tuple[int, int], shape: tuple[int, int], ratio_pad: RatioPad | None, nc: int
) -> torch.Tensor:
    """Class map at the original image size from stride-8 seg logits ``(nc, h, w)`` or an exported class map ``(H, W)``:
    the argmax at the input size `input_hw` (where val scores it and exports bake it), then the ids resized
    nearest-neighbour to `shape` without the letterbox padding."""
    ids = seg if seg.ndim == 2 else upsample_logits(seg[None], input_hw)[0].max(0).indices  # max(dim) streams on CPU
    ids = ops.scale_masks(ids[None, None].float(), shape, ratio_pad, mode="nearest")[0, 0]
    return ids.to(torch.uint8 if nc <= IGNORE else torch.int32)


class UnifiedResults(Results):
    """Ultralytics' ``Results`` with one image's three outputs: ``boxes`` (after NMS), ``semantic_mask`` (class map at
    the original size) and ``probs``; ``task_names`` holds each task's class names."""

    def __init__(
        self,
        orig_img: np.ndarray,
        path: str,
        task_names: dict[str, dict[int, str]],
        boxes: torch.Tensor | None = None,
        semantic_mask: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        speed: dict[str, float] | None = None,
    ):
        """Store the outputs; ``names`` (what Ultralytics' box code reads) are the detection names."""
        super().__init__(
            orig_img, path, task_names["det"], boxes=boxes, probs=probs, speed=speed, semantic_mask=semantic_mask
        )
        self.task_names = task_names

    def new(self) -> UnifiedResults:
        """An empty result for the same image (Ultralytics' ``cpu()``, ``numpy()``, ``[i]`` build on it)."""
        result = UnifiedResults(self.orig_img, self.path, self.task_names, speed=self.speed)
        result.save_dir = self.save_dir
        return result

    def detections(self) -> Results:
        """The detections alone, as a plain Ultralytics detection result."""
        return Results(self.orig_img, self.path, self.names, boxes=None if self.boxes is None else self.boxes.data)

    def summary(self, normalize: bool = False, decimals: int = 5) -> list[dict]:
        """Ultralytics' per-box summary of the detections (also behind ``to_json``, ``to_csv``, ``to_df``)."""
        return self.detections().summary(normalize, decimals)

    def save_txt(self, txt_file: str | Path, save_conf: bool = False) -> str:
        """Save the detections in YOLO text format, as Ultralytics does."""
        return self.detections().save_txt(txt_file, save_conf)

    def save_crop(self, save_dir: str | Path, file_name: str | Path = Path("im.jpg")) -> None:
        """Save one crop per detection, as Ultralytics does."""
        self.detections().save_crop(save_dir, file_name)

    def verbose(self) -> str:
        """One log string: detections per class, the largest segmentation classes, the top-1 image class."""
        text = ""
        if self.boxes is not None:
            text += self.detections().verbose()
        if self.semantic_mask is not None:
            ids = torch.as_tensor(self.semantic_mask.data).flatten().long()
            share = ids[ids != IGNORE].bincount().float() / ids.numel()
            top = share.argsort(descending=True)[:3].tolist()
            text += "seg " + " ".join(f"{self.task_names['seg'][i]} {share[i]:.0%}" for i in top if share[i]) + ", "
        if self.probs is not None:
            text += f"cls {self.task_names['cls'][self.probs.top1]} {float(self.probs.top1conf):.2f}, "
        return text

    def plot(
        self,
        *,
        line_width: float | None = None,
        font_size: float | None = None,
        font: str = "Arial.ttf",
        pil: bool = False,
        img: np.ndarray | None = None,
        masks: bool = True,
        probs: bool = True,
        show: bool = False,
        save: bool = False,
        filename: str | None = None,
        alpha: float = 0.45,
        **kwargs,
    ) -> np.ndarray:
        """Annotate the image: the semantic overlay with a legend, Ultralytics' boxes, the top-1 image class."""
        example = " ".join(n for names in self.task_names.values() for n in names.values())  # PIL for non-ASCII names
        im = np.ascontiguousarray(self.orig_img if img is None else img).copy()
        if masks and self.semantic_mask is not None:
            mask = torch.as_tensor(self.semantic_mask.data).cpu().numpy()
            annotator = Annotator(tinted(im, mask, alpha), line_width, font_size, font, example=example)
            self._plot_legend(annotator, mask)
            im = np.ascontiguousarray(annotator.result())
        style = {"line_width": line_width, "font_size": font_size, "font": font}
        im = super().plot(img=im, masks=False, probs=False, **style, **kwargs)
        annotator = Annotator(im, line_width, font_size, font, example=example)
        if probs and self.probs is not None:
            label = f"{self.task_names['cls'][self.probs.top1]} {float(self.probs.top1conf):.2f}"
            margin = 2 * annotator.lw
            annotator.text([margin, margin + self._line_height(annotator)], label, box_color=(64, 64, 64))
        if show:
            annotator.show(self.path)
        if save:
            annotator.save(filename or f"results_{Path(self.path).name}")
        return annotator.result(pil)

    def _plot_legend(self, annotator: Annotator, mask: np.ndarray) -> None:
        """List the classes of the class map `mask` present in the image (background left out), bottom left."""
        names = self.task_names["seg"]
        margin, step = 2 * annotator.lw, self._line_height(annotator) + annotator.lw
        y = annotator.im.shape[0] - 2 * margin  # baseline of the lowest entry
        for i in reversed([int(i) for i in np.unique(mask) if int(i) in names and int(i) != BACKGROUND]):
            color = colors(i, True)
            annotator.text([margin, y], names[i], txt_color=annotator.get_txt_color(color), box_color=color)
            y -= step

    @staticmethod
    def _line_height(annotator: Annotator) -> int:
        """Height of one text line of `annotator`, padding included."""
        if annotator.pil:
            return annotator.font.getsize("Ag")[1] + 2
        return cv2.getTextSize("Ag", 0, fontScale=annotator.sf, thickness=annotator.tf)[0][1] + 3


class UnifiedPredictor(DetectionPredictor):
    """Ultralytics' detection predictor for the unified model's three outputs (.pt and exports): images letterboxed as
    in validation, NMS on ``det``, a ``UnifiedResults`` per image."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Ultralytics' setup without the package's keys; the task is ``unified``."""
        super().__init__(cfg, without_unified_keys(overrides), _callbacks)
        self.args.task = "unified"
        self.task_names: dict[str, dict[int, str]] = {}
        self.ratio_pads: list[RatioPad | None] = []

    def stream_inference(self, *args: Any, **kwargs: Any) -> Iterator[UnifiedResults]:
        """Ultralytics' inference, on the package's CPU threads (`unified_threads`)."""
        with unified_threads():
            yield from super().stream_inference(*args, **kwargs)

    def setup_model(self, model, verbose: bool = True) -> None:
        """Load the model with Ultralytics' AutoBackend and read the class names of every task."""
        super().setup_model(model, verbose)
        self.task_names = {task: model_task_names(self.model, task) for task in TASKS}

    def setup_source(self, source: Any, stride: int | None = None) -> None:
        """Ultralytics' sources; an empty or non-image file among them fails with its name (Ultralytics skips it)."""
        check_images(source_images(source))
        super().setup_source(source, stride)

    def preprocess(self, im: torch.Tensor | list[np.ndarray]) -> torch.Tensor:
        """Ultralytics' preprocessing; tensor sources are taken as already letterboxed."""
        self.ratio_pads = [None] * len(im)
        return super().preprocess(im)

    def pre_transform(self, im: list[np.ndarray]) -> list[np.ndarray]:
        """Letterbox each image as validation does, keeping its ``ratio_pad``."""
        boxed = [letterbox(x, self.imgsz) for x in im]
        self.ratio_pads = [ratio_pad for _, ratio_pad in boxed]
        return [x for x, _ in boxed]

    def postprocess(self, preds, img: torch.Tensor, orig_imgs, **kwargs) -> list[UnifiedResults]:
        """NMS on ``det`` (Ultralytics'), then one result per image with the ``seg`` and ``cls`` outputs added."""
        det, seg, cls = preds[:3]
        return super().postprocess(det, img, orig_imgs, seg=seg, cls=cls, **kwargs)

    def construct_results(self, preds, img, orig_imgs, seg: torch.Tensor, cls: torch.Tensor) -> list[UnifiedResults]:
        """One ``UnifiedResults`` per image of the batch."""
        rows = zip(preds, orig_imgs, self.batch[0], seg, cls, self.ratio_pads, strict=False)
        return [self.construct_result(p, img, im0, path, s, c, rp) for p, im0, path, s, c, rp in rows]

    def construct_result(
        self,
        pred: torch.Tensor,
        img: torch.Tensor,
        orig_img: np.ndarray,
        img_path: str,
        seg: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        ratio_pad: RatioPad | None = None,
    ) -> UnifiedResults:
        """Boxes and the semantic map in original-image coordinates, plus the class probabilities."""
        shape = orig_img.shape[:2]
        pred[:, :4] = ops.scale_boxes(img.shape[2:], pred[:, :4], shape, ratio_pad=ratio_pad)
        nc_seg = len(self.task_names["seg"])
        mask = semantic_map(seg, img.shape[2:], shape, ratio_pad, nc_seg) if seg is not None else None
        return UnifiedResults(orig_img, img_path, self.task_names, boxes=pred[:, :6], semantic_mask=mask, probs=probs)
