"""Tasks labelled on the same images: one dataset yields each image once, with the boxes and mask it has.

Augmentation moves boxes and mask together; mosaic, mixup and cutmix only mix images with the same labels.
`task_views` splits a collated batch into one batch per task, of the images that have its label."""

from __future__ import annotations

import random
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.data.augment import BaseMixTransform, Compose, Format, Mosaic
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils.patches import imread

from yolo_unified.data.config import label_file
from yolo_unified.nn.loss import IGNORE

SHARED_TASKS = ("seg", "det")  # tasks whose labels can sit on shared images (classification reads class folders)


class SameLabelsMix:
    """A mixing transform (Mosaic, MixUp, CutMix) that draws its other images among those with the same labels as
    the image it starts from, and keeps that image's ``tasks`` on the result."""

    dataset: SharedDataset
    _tasks: tuple[str, ...] = ()

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Mix `labels` with images of the same label set; the result keeps the label set."""
        self._tasks = labels["tasks"]
        mixed = super().__call__(labels)
        mixed["tasks"] = self._tasks
        return mixed

    def get_indexes(self) -> list[int] | int:
        """Random images with the current label set: from the mosaic buffer when it holds some, else the dataset."""
        pool = self.dataset.by_tasks[self._tasks]
        k = self.n - 1 if isinstance(self, Mosaic) else 1
        if isinstance(self, Mosaic) and self.buffer_enabled:
            pool = [i for i in self.dataset.buffer if self.dataset.sample_tasks[i] == self._tasks] or pool
        picks = random.choices(pool, k=k)
        return picks if isinstance(self, Mosaic) else picks[0]


def same_labels(transform: BaseMixTransform) -> BaseMixTransform:
    """`transform` with its class swapped for its `SameLabelsMix` subclass (made once per class)."""
    cls = type(transform)
    if not issubclass(cls, SameLabelsMix):
        if cls not in SAME_LABELS:
            SAME_LABELS[cls] = type(f"SameLabels{cls.__name__}", (SameLabelsMix, cls), {"__module__": __name__})
        transform.__class__ = SAME_LABELS[cls]
    return transform


SAME_LABELS: dict[type, type] = {}


def mixing_transforms(transform: Any) -> list[BaseMixTransform]:
    """Every mixing transform inside a (nested) Compose or mixing transform's pre-transform."""
    found = []
    if isinstance(transform, Compose):
        for t in transform.transforms:
            found += mixing_transforms(t)
    elif isinstance(transform, BaseMixTransform):
        found.append(transform)
        found += mixing_transforms(transform.pre_transform)
    return found


class SharedFormat(Format):
    """Ultralytics' detection ``Format`` that also turns the semantic mask into an int32 tensor."""

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The image as Ultralytics formats it, and the mask as a tensor."""
        labels = super().apply_image(labels, params)
        labels["semantic_mask"] = torch.from_numpy(np.ascontiguousarray(labels["semantic_mask"])).to(torch.int32)
        return labels


class SharedDataset(YOLODataset):
    """Ultralytics' detection dataset over shared images, each with its YOLO boxes and/or semantic mask (``data``: the
    detection section plus ``masks_dir`` and ``tasks``). A missing box file means no detection label (an empty one: no
    objects), a missing mask no segmentation label; ``sample_tasks[i]`` are image ``i``'s tasks."""

    format_class = SharedFormat

    def __init__(self, *args: Any, data: dict[str, Any], **kwargs: Any) -> None:
        """Read the images and boxes as Ultralytics does, then which label files each image has."""
        super().__init__(*args, data=data, **kwargs)
        tasks = data["tasks"]
        masks = [label_file(f, "seg", data) for f in self.im_files]
        self.mask_files = [str(m) if "seg" in tasks and m.is_file() else None for m in masks]
        has = {"det": [label_file(f, "det", data).is_file() for f in self.im_files], "seg": self.mask_files}
        self.sample_tasks = [tuple(t for t in SHARED_TASKS if t in tasks and has[t][i]) for i in range(len(self))]
        self.by_tasks: dict[tuple[str, ...], list[int]] = {}
        for i, label_set in enumerate(self.sample_tasks):
            self.by_tasks.setdefault(label_set, []).append(i)

    def build_transforms(self, hyp: Any = None) -> Compose:
        """Ultralytics' detection transforms, their mixing transforms restricted to images with the same labels."""
        transforms = super().build_transforms(hyp)
        for t in mixing_transforms(transforms):
            same_labels(t)
        return transforms

    def load_mask(self, index: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Image `index`'s mask as stored (what Ultralytics' segmentation label plot reads); an error without one."""
        file = self.mask_files[index]
        mask = None if file is None else imread(file, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"{self.im_files[index]} has no readable mask ({file})")
        return mask

    def get_image_and_label(self, index: int) -> dict[str, Any]:
        """The image, its boxes, its mask (255 without a mask file) and ``tasks``, the tasks it has labels of."""
        label = super().get_image_and_label(index)
        h, w = label["img"].shape[:2]
        if self.mask_files[index] is None:
            mask = np.full((h, w), IGNORE, np.uint8)
        else:
            mask = self.load_mask(index)
            if mask.shape != (h, w):
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        label["semantic_mask"] = mask
        label["tasks"] = self.sample_tasks[index]
        return label


def task_views(batch: dict[str, Any]) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
    """Split a collated `SharedDataset` batch into ``{task: (image indices, task batch)}``: each task's batch holds the
    images that have its label, with only its labels (``batch_idx`` renumbered)."""
    views = {}
    device = batch["img"].device
    per_image = batch["tasks"]
    for task in SHARED_TASKS:
        keep = torch.tensor([task in t for t in per_image], device=device)
        if not keep.any():
            continue
        index = keep.nonzero().squeeze(1)
        view = {k: v for k, v in batch.items() if k not in {"bboxes", "cls", "batch_idx", "semantic_mask", "tasks"}}
        view["img"] = batch["img"][index]
        for key in ("im_file", "ori_shape", "resized_shape", "ratio_pad"):
            if key in batch:
                view[key] = [batch[key][i] for i in index.tolist()]
        if task == "det":
            new_position = torch.cumsum(keep.long(), 0) - 1  # image i -> its place among the kept images
            image_of_box = batch["batch_idx"].long().to(device)
            boxes = keep[image_of_box]
            view["bboxes"], view["cls"] = batch["bboxes"][boxes], batch["cls"][boxes]
            view["batch_idx"] = new_position[image_of_box[boxes]].to(batch["batch_idx"].dtype)
        else:
            view["semantic_mask"] = batch["semantic_mask"][index]
        views[task] = (index, view)
    return views
