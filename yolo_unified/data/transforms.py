"""Image transforms: the letterbox that predict, val and every export share, and the flip and zoom of stored
single-image batches (replayed images, in Ultralytics' batch format after preprocessing)."""

from __future__ import annotations

import math
import random

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from ultralytics.data.augment import LetterBox

from yolo_unified.data.layout import IGNORE

FILL = 114 / 255  # Ultralytics' letterbox and affine border colour
RatioPad = tuple[tuple[float, float], tuple[int, int]]  # ((gain_h, gain_w), (pad_left, pad_top)), as Ultralytics'


def letterbox(im: np.ndarray, imgsz: list[int]) -> tuple[np.ndarray, RatioPad]:
    """Resize and pad one BGR image exactly as Ultralytics' validation datasets do (``load_image``, then
    ``LetterBox(scaleup=False)``), so predict, val and every export see the same pixels; return it and its
    ``ratio_pad``."""
    h0, w0 = im.shape[:2]
    side = max(imgsz)
    if (r := side / max(h0, w0)) != 1:
        size = min(math.ceil(w0 * r), side), min(math.ceil(h0 * r), side)
        im = cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)
    box = LetterBox(imgsz, auto=False, scaleup=False)
    params = box.get_params({"img": im})
    w1, h1 = params["new_unpad"]
    return box.apply_image({"img": im}, params)["img"], ((h1 / h0, w1 / w0), (params["left"], params["top"]))


def zoom_sample(sample: dict, scale: float, shift: tuple[float, float], flip: bool) -> dict:
    """`sample` zoomed by `scale` about its centre, moved by `shift` (fractions of its size) and, with `flip`,
    mirrored left-right; image and labels alike. Pixels from outside get the border colour (and the ignore label);
    boxes are clipped, those left with under a quarter of their area or 2 pixels a side dropped."""
    img = sample["img"]
    h, w = img.shape[-2:]
    sx, sy = shift
    mirror = -1.0 if flip else 1.0
    # grid_sample maps output to input in [-1, 1] coordinates: u_in = (u_out - 2 * shift) / scale (x mirrored)
    theta = torch.tensor(
        [[mirror / scale, 0.0, -mirror * 2 * sx / scale], [0.0, 1 / scale, -2 * sy / scale]],
        dtype=img.dtype,
        device=img.device,
    )[None]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = dict(sample)
    out["img"] = F.grid_sample(img - FILL, grid, mode="bilinear", align_corners=False) + FILL
    if "semantic_mask" in sample:
        mask = sample["semantic_mask"][:, None].float() - IGNORE  # outside the image: 0 -> IGNORE after the shift back
        moved = F.grid_sample(mask, grid, mode="nearest", align_corners=False) + IGNORE
        out["semantic_mask"] = moved[:, 0].round().to(sample["semantic_mask"].dtype)
    if "bboxes" in sample:
        out.update(zoom_boxes(sample, scale, (sx, sy), flip, (h, w)))
    return out


def zoom_boxes(sample: dict, scale: float, shift: tuple[float, float], flip: bool, size: tuple[int, int]) -> dict:
    """The ``bboxes``, ``cls`` and ``batch_idx`` of `sample` after `zoom_sample`'s transform (see there)."""
    boxes = sample["bboxes"].clone()
    if flip:
        boxes[:, 0] = 1 - boxes[:, 0]
    centre = torch.tensor([0.5, 0.5], dtype=boxes.dtype, device=boxes.device)
    moved = torch.tensor(shift, dtype=boxes.dtype, device=boxes.device)
    xy = scale * (boxes[:, :2] - centre) + centre + moved
    wh = scale * boxes[:, 2:]
    lo, hi = (xy - wh / 2).clamp(0, 1), (xy + wh / 2).clamp(0, 1)
    kept_wh = hi - lo
    pixels = torch.tensor([size[1], size[0]], dtype=boxes.dtype, device=boxes.device)
    keep = (kept_wh.prod(1) >= 0.25 * wh.prod(1)) & (kept_wh * pixels >= 2).all(1)
    clipped = torch.cat([(lo + hi) / 2, kept_wh], 1)
    return {"bboxes": clipped[keep], "cls": sample["cls"][keep], "batch_idx": sample["batch_idx"][keep]}


def random_zoom(sample: dict, rng: random.Random, scale: float = 0.25, translate: float = 0.1) -> dict:
    """`zoom_sample` with a random flip (p 0.5), a zoom in ``1 +- scale`` and a shift in ``+- translate`` per axis
    (Ultralytics' ``fliplr``, ``scale`` and ``translate`` augmentations, at milder defaults)."""
    zoom = rng.uniform(1 - scale, 1 + scale)
    shift = (rng.uniform(-translate, translate), rng.uniform(-translate, translate))
    return zoom_sample(sample, zoom, shift, rng.random() < 0.5)
