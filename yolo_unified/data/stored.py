"""The images a run stores for later runs (the replay memory: single-image batches, labels in the model's class ids)
as files: one image as a PNG, or a task's stored images as a dataset of the multi-task layout, so that the task can be
scored on them where its val data is gone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.utils import YAML

from yolo_unified.data.layout import LAYOUT, YAML_HEADER
from yolo_unified.files import save_atomically


def as_8bit(img: torch.Tensor) -> torch.Tensor:
    """An image of floats in [0, 1] as 8-bit values (one already 8-bit as it is)."""
    return img if img.dtype == torch.uint8 else (img.clamp(0, 1) * 255).round().to(torch.uint8)


def write_image(path: Path, img: torch.Tensor) -> None:
    """Save a stored image ``(1, 3, H, W)`` (8-bit, or floats in [0, 1] as memories of earlier versions hold them) as
    a PNG, replacing any file of that name at once (a run in an existing folder never reads an earlier run's image;
    DDP ranks write the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = as_8bit(img[0]).permute(1, 2, 0).cpu().numpy()
    save_atomically(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes(), path)


def write_stored(samples: list[dict], task: str, names: list[str], root: Path) -> Path:
    """Write the stored `samples` of `task` (class ids: positions in `names`) as the val split of a dataset at `root`
    (the multi-task layout: images, YOLO box labels or masks, class folders); return its data YAML."""
    val = root / LAYOUT[task]["val"]
    for i, sample in enumerate(samples):
        stem = f"{i:04d}"
        if task == "cls":  # Ultralytics reads train/ and val/ of the folder, numbering the sorted class folders
            for split in ("train", "val"):
                write_image(root / LAYOUT[task][split] / f"{int(sample['cls']):04d}" / f"{stem}.png", sample["img"])
            continue
        write_image(val / f"{stem}.png", sample["img"])
        if task == "det":
            rows = [f"{int(c)} " + " ".join(f"{v:.6f}" for v in box) for c, box in zip(
                sample["cls"].view(-1).tolist(), sample["bboxes"].view(-1, 4).tolist(), strict=True)]  # fmt: skip
            label = root / "det/labels/val" / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            save_atomically("".join(f"{row}\n" for row in rows).encode(), label)
        else:
            mask = sample["semantic_mask"][0].cpu().numpy().astype(np.uint8)
            file = root / "seg/masks/val" / f"{stem}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            save_atomically(cv2.imencode(".png", mask)[1].tobytes(), file)
    section = {**LAYOUT[task], "names": dict(enumerate(names))}
    if task == "cls":  # a folder for every class, stored images or not
        for split in ("train", "val"):
            for i in range(len(names)):
                (root / LAYOUT[task][split] / f"{i:04d}").mkdir(parents=True, exist_ok=True)
    else:  # one split, scored only
        section["train"] = section["val"]
    YAML.save(root / "stored.yaml", {"path": ".", task: section}, header=YAML_HEADER)
    return root / "stored.yaml"
