"""Network modules of the unified model: a light FPN neck and the single-branch unified head."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules import Conv, Detect
from ultralytics.utils.torch_utils import fuse_conv_and_bn

from yolo_unified.files import allow_in_checkpoints


class UnifiedFPN(nn.Module):
    """Feature pyramid: a 1x1 lateral per tapped level to one common width and a top-down nearest upsample-add. No 3x3
    smoothing per level: the head's shared tower does that (the stride-8 one alone would cost 40% of the head FLOPs)."""

    def __init__(self, ch: list[int] | tuple[int, ...], width: int = 64):
        """Build laterals from input widths `ch` (shallow to deep) to the common width `width`."""
        super().__init__()
        self.lateral = nn.ModuleList(Conv(c, width, 1) for c in ch)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the fused pyramid, shallow (stride 8) to deep (stride 32)."""
        out = [conv(xi) for conv, xi in zip(self.lateral, x, strict=True)]
        for i in range(len(out) - 2, -1, -1):  # top-down pathway
            out[i] = out[i] + F.interpolate(out[i + 1], size=out[i].shape[-2:], mode="nearest")
        return out


def upsample_logits(seg: torch.Tensor, size: list[int] | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of seg logits ``(B, C, h, w)`` to `size`, as Ultralytics' semantic validator does it (made
    contiguous first: a channels-last or sliced tensor takes a ~10x slower CPU path)."""
    return F.interpolate(seg.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)


class LevelSharedConv(nn.Module):
    """3x3 conv (in ``groups`` channel groups) + BatchNorm + SiLU, the conv shared by every pyramid level, one BatchNorm
    per level (as EfficientDet's shared heads: the levels' statistics differ, a shared one would differ train/eval)."""

    def __init__(self, width: int, levels: int, groups: int = 1):
        """A `width` -> `width` 3x3 conv in `groups` channel groups, shared by `levels` levels."""
        super().__init__()
        if width % groups:
            raise ValueError(f"the tower's width {width} is not divisible by its {groups} groups")
        self.conv = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(levels))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Apply the shared conv and level `level`'s normalisation (after `fuse`, level `level`'s fused conv)."""
        if hasattr(self, "bn"):
            return self.act(self.bn[level](self.conv(x)))
        return self.act(self.fused[level](x))

    def fuse(self) -> None:
        """Fold each level's BatchNorm into its own copy of the conv (inference: one conv per level, no BN)."""
        self.fused = nn.ModuleList(fuse_conv_and_bn(deepcopy(self.conv), bn) for bn in self.bn)  # it fuses in place
        del self.conv, self.bn


class BinExpectation(nn.Module):
    """Ultralytics' ``DFL`` decode (each box side's expected distance over `bins` bins) as one matrix product: the
    same values, ~7x faster on the CPU (0.24 vs 1.8 ms for the 5376 anchors of a 512x512 image)."""

    def __init__(self, bins: int = 16):
        """Decode distributions over `bins` bins (``reg_max``)."""
        super().__init__()
        self.bins = bins
        self.register_buffer("index", torch.arange(bins, dtype=torch.float).view(1, 1, 1, bins), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Distributions ``(B, 4 * bins, A)`` -> expected distances ``(B, 4, A)``."""
        b, _, a = x.shape
        return torch.matmul(self.index.to(x.dtype), x.view(b, 4, self.bins, a).softmax(2)).view(b, 4, a)


class UnifiedHead(Detect):
    """One head for three tasks: a conv tower shared by every FPN level and task, then a 1x1 projection per task:
    detection in Ultralytics' ``Detect`` layout on every level, ``nc_seg`` logits on the stride-8 level (upsampled by
    the validator and predictor), classification from the levels' pooled features.

    Training returns a dict (``boxes``, ``scores``, ``feats``, ``seg``, ``cls``); inference ``(det, seg, cls, raw)``
    with decoded boxes, stride-8 seg logits and class probabilities; export ``(det, seg, cls)``, where
    ``bake_argmax`` makes ``seg`` the class map ``(B, H, W)``.
    """

    bake_argmax = False  # export: emit the seg class map (B, H, W) instead of logits
    cv2 = cv3 = None  # no per-branch convs: Ultralytics' fuse/load code checks these

    @property
    def end2end(self) -> bool:
        """Always NMS-based (no one-to-one branch)."""
        return False

    @end2end.setter
    def end2end(self, value: bool) -> None:
        """Validators set this from ``nms``; there is nothing to switch."""

    def __init__(
        self,
        nc: int = 80,
        nc_seg: int = 21,
        nc_cls: int = 10,
        tower: int = 2,
        groups: int = 1,
        reg_max: int = 16,
        ch=(),
    ):
        """Build the shared tower (`tower` 3x3 convs of `groups` groups) on width ``ch[0]`` and the projections."""
        nn.Module.__init__(self)
        if len(set(ch)) != 1:
            raise ValueError(f"UnifiedHead needs equal widths on every level, got {list(ch)}")
        width = ch[0]
        self.nc, self.nc_seg, self.nc_cls = nc, nc_seg, nc_cls
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + reg_max * 4
        self.stride = torch.zeros(self.nl)
        self.tower = nn.ModuleList(LevelSharedConv(width, self.nl, groups) for _ in range(tower))
        self.det = nn.Conv2d(width, self.no, 1)
        self.seg = nn.Conv2d(width, nc_seg, 1)
        self.cls = nn.Linear(width, nc_cls)
        self.dfl = BinExpectation(reg_max) if reg_max > 1 else nn.Identity()

    @property
    def one2many(self) -> dict:
        """No separate one-to-many branches: the projection is shared (kept for Ultralytics code that asks)."""
        return {"box_head": None, "cls_head": None}

    def forward_head(self, x: list[torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        """Run the shared tower and projections on every level; return the raw outputs of all tasks."""
        bs = x[0].shape[0]
        feats = [self.run_tower(xi, level) for level, xi in enumerate(x)]
        det = torch.cat([self.det(f).view(bs, self.no, -1) for f in feats], dim=-1)
        boxes, scores = det.split((4 * self.reg_max, self.nc), dim=1)
        pooled = torch.stack([f.mean(dim=(2, 3)) for f in feats]).mean(0)
        return {"boxes": boxes, "scores": scores, "feats": x, "seg": self.seg(feats[0]), "cls": self.cls(pooled)}

    def run_tower(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The shared tower on pyramid level `level`."""
        for conv in self.tower:
            x = conv(x, level)
        return x

    def forward(self, x: list[torch.Tensor]):
        """Return raw outputs in training, ``(det, seg, cls[, raw])`` at inference (see the class docstring)."""
        raw = self.forward_head(x)
        if self.training:
            return raw
        det, seg, cls = self._inference(raw), raw["seg"], raw["cls"].softmax(1)
        if self.export and self.bake_argmax:  # the class map at the input size, ready to use
            size = [s * int(self.stride[0]) for s in x[0].shape[-2:]]
            seg = upsample_logits(seg, size).max(1).indices  # max(dim) streams on CPU, argmax over dim 1 does not
        return (det, seg, cls) if self.export else (det, seg, cls, raw)

    def bias_init(self):
        """Projection biases: boxes 2.0, det classes for ~5 objects per 640 image at stride 16, seg and cls 0."""
        s = float(self.stride[min(1, self.nl - 1)])
        self.det.bias.data[: 4 * self.reg_max] = 2.0
        self.det.bias.data[4 * self.reg_max :] = math.log(5 / self.nc / (640 / s) ** 2)
        nn.init.zeros_(self.seg.bias)
        nn.init.zeros_(self.cls.bias)

    @torch.no_grad()
    def copy_class_rows(self, old: UnifiedHead) -> None:
        """Copy the projections of `old` (as many or fewer classes per task) into the first rows here: every old output
        stays what the old head gives; the new classes' rows keep their initialisation."""
        box = 4 * self.reg_max
        self.det.weight[: box + old.nc] = old.det.weight[: box + old.nc]
        self.det.bias[: box + old.nc] = old.det.bias[: box + old.nc]
        for mine, theirs, n in ((self.seg, old.seg, old.nc_seg), (self.cls, old.cls, old.nc_cls)):
            mine.weight[:n] = theirs.weight[:n]
            mine.bias[:n] = theirs.bias[:n]

    def fuse(self) -> None:
        """Fold the tower's per-level BatchNorms (Ultralytics' ``fuse`` folds the other convs' BatchNorms itself)."""
        for conv in self.tower:
            if hasattr(conv, "bn"):
                conv.fuse()


allow_in_checkpoints(UnifiedFPN, LevelSharedConv, BinExpectation, UnifiedHead)  # safe mode loads unified checkpoints
