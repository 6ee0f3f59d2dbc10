"""Joint training's task parts: each task's Ultralytics data pipeline (data, dataset, loader, preprocessing, plots,
validator), run by its unified trainer class's functions on a plain object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from ultralytics.utils import colorstr
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.data.shared import SharedDataset
from yolo_unified.models.unified.train import TRAINERS, UnifiedTrainerMixin


class TaskPart:
    """One task of a joint run: its data and loaders, and its Ultralytics trainer's work on them.

    A plain object, not a trainer (one would start a run of its own: seeds, folders, callbacks): it runs its task
    trainer's functions (``trainer_class``) on itself, holding what they read: ``args`` (the run's, with the task's
    ``task_args``), ``data``, ``save_dir`` (``<task>/``), loaders, the run's ``device``, ``callbacks``, ``on_plot``,
    and its ``model`` and ``stride`` once the run has them."""

    def __init__(
        self,
        task: str,
        args: SimpleNamespace,
        save_dir: Path,
        device: torch.device,
        callbacks: dict,
        on_plot: Any,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Read this task's section of the data YAML, unless `data` is given."""
        self.task_key, self.trainer_class = task, TRAINERS[task]
        self.validator_class = self.trainer_class.validator_class
        self.args, self.save_dir = args, save_dir
        self.device, self.callbacks, self.on_plot = device, callbacks, on_plot
        self.model: torch.nn.Module | None = None
        self.stride: int | None = None
        self.train_loader: DataLoader | None = None
        self.test_loader: DataLoader | None = None
        self.data = data or self.trainer_class.get_dataset(self)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Dataset:
        """The task's dataset for `mode`: its Ultralytics trainer's (strategies add no images to a joint run)."""
        return super(UnifiedTrainerMixin, self.trainer_class).build_dataset(self, img_path, mode, batch)

    def get_dataloader(self, dataset_path: str, batch_size: int, rank: int, mode: str) -> DataLoader:
        """The task's loader of `dataset_path` for `mode`."""
        return self.trainer_class.get_dataloader(self, dataset_path, batch_size, rank, mode)

    def preprocess_batch(self, batch: dict) -> dict:
        """The task's preprocessing, without relabelling (a joint run's data has the model's classes)."""
        return super(UnifiedTrainerMixin, self.trainer_class).preprocess_batch(self, batch)

    def plot_training_samples(self, batch: dict, ni: int) -> None:
        """Plot a training batch into the task's folder."""
        self.trainer_class.plot_training_samples(self, batch, ni)

    def plot_training_labels(self) -> None:
        """Plot the task's label statistics into its folder."""
        self.trainer_class.plot_training_labels(self)

    def get_class_counts(self, **kwargs: Any) -> np.ndarray:
        """Per-class counts of the task's training labels (what segmentation's label plot reads)."""
        return self.trainer_class.get_class_counts(self, **kwargs)

    def get_validator(self) -> Any:
        """The task's unified validator, on the part's val loader and in its folder."""
        return self.trainer_class.get_validator(self)

    def trained_imgsz(self) -> dict[str, int]:
        """``{task: the image size it trains at}``."""
        return self.trainer_class.trained_imgsz(self)

    def close_mosaic(self) -> None:
        """Stop mosaic augmentation in the task's training loader."""
        self.trainer_class._close_dataloader_mosaic(self)


class SharedPart(TaskPart):
    """The tasks of a joint run on shared images as one training stream (a `SharedDataset`: each image once, with the
    labels it has), running the detection trainer's functions in ``<task>+<task>/``."""

    def __init__(self, parts: dict[str, TaskPart], data: dict[str, Any]) -> None:
        """One stream for the tasks of `parts` (det among them), on `data`."""
        det = parts["det"]
        save_dir = det.save_dir.parent / "+".join(parts)
        super().__init__("det", det.args, save_dir, det.device, det.callbacks, det.on_plot, data=data)
        self.tasks = list(parts)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Dataset:
        """The shared images at `img_path` with the training augmentation (the stream only trains)."""
        return SharedDataset(
            img_path=img_path,
            imgsz=self.args.imgsz,
            batch_size=batch,
            augment=mode == "train",
            hyp=self.args,
            cache=self.args.cache or None,
            stride=max(int(unwrap_model(self.model).stride.max()), 32),
            prefix=colorstr(f"{mode}: "),
            task="detect",
            classes=self.args.classes,
            data=self.data,
            fraction=self.args.fraction,
        )
