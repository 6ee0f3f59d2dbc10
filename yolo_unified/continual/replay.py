"""Replay: a few stored images of every finished task, trained with their own task's loss in later stages."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from ultralytics.utils import LOGGER

from yolo_unified.common import TASKS
from yolo_unified.continual.base import Strategy, draw_samples, training_images
from yolo_unified.continual.lwf import task_distance
from yolo_unified.data.stored import as_8bit, write_image
from yolo_unified.data.transforms import random_zoom
from yolo_unified.nn.tasks import UnifiedLoss, loss_scale
from yolo_unified.settings import setting


def resize_sample(sample: dict, size: int) -> dict:
    """A single-image batch resized to ``size x size`` (normalised boxes stay valid; masks use nearest)."""
    out = {k: v for k, v in sample.items() if k in {"img", "cls", "bboxes", "batch_idx", "semantic_mask"}}
    out["img"] = F.interpolate(sample["img"], size=(size, size), mode="bilinear", align_corners=False)
    if "semantic_mask" in sample:
        mask = sample["semantic_mask"][:, None].float()
        out["semantic_mask"] = F.interpolate(mask, size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    return out


def collate(samples: list[dict]) -> dict:
    """Join single-image batches of one task into one batch."""
    batch = {"img": torch.cat([s["img"] for s in samples])}
    if "semantic_mask" in samples[0]:
        batch["semantic_mask"] = torch.cat([s["semantic_mask"] for s in samples])
    elif "bboxes" in samples[0]:
        batch["bboxes"] = torch.cat([s["bboxes"] for s in samples])
        batch["cls"] = torch.cat([s["cls"] for s in samples])
        batch["batch_idx"] = torch.cat([torch.full_like(s["batch_idx"], i) for i, s in enumerate(samples)])
    else:
        batch["cls"] = torch.cat([s["cls"] for s in samples])
    return batch


def stored_form(sample: dict) -> dict:
    """A single-image batch as the memory keeps it: on the CPU, the image as 8-bit RGB (a quarter of its floats)."""
    return {**{k: v.cpu() for k, v in sample.items()}, "img": as_8bit(sample["img"]).cpu()}


def training_form(sample: dict, device: torch.device) -> dict:
    """A stored single-image batch on `device`, the image as floats in [0, 1] (memories of earlier versions hold
    floats already)."""
    img = sample["img"].float() / 255 if sample["img"].dtype == torch.uint8 else sample["img"]
    return {**{k: v.to(device) for k, v in sample.items()}, "img": img.to(device)}


def oversampling_factor(own: list, stored: list[dict]) -> int:
    """How many times each stored image joins a training set so that an old class has about as many images as a
    class of the stage's own data (``own``: Ultralytics' classification samples ``[file, class, ...]``); at least 1."""
    own_per_class = len(own) / max(1, len({s[1] for s in own}))
    stored_per_class = len(stored) / len({int(s["cls"]) for s in stored})
    return max(1, round(own_per_class / stored_per_class))


def loss_per_image(model: torch.nn.Module, preds: dict, batch: dict) -> torch.Tensor:
    """The batch's task loss (its own Ultralytics loss) on the scale of one image, like the trainer's extra terms.

    Detection and segmentation losses come summed over the batch (Ultralytics multiplies them by the batch size);
    classification's is already a mean.
    """
    if getattr(model, "criterion", None) is None:  # built by the model's first loss() call in training
        model.criterion = model.init_criterion()
    loss, _ = model.criterion(preds, batch)
    return loss.sum() / loss_scale(batch)


class Replay(Strategy):
    """cfg: ``{size: images kept per task (10), ratio: replayed images per current image, batch: 2, weight: 1.0,
    mix: False, oversample: False, tasks: the tasks it replays (all)}``.

    At the end of a stage, ``size`` training images of its task (validation transforms, resized to the stage's
    imgsz, on the CPU) join ``memory["replay"][task]``. In later stages every training step adds the loss of a
    random draw of each finished task's stored images, computed by that task's own Ultralytics loss: ``ratio`` times
    the current batch size per task when ``ratio`` is set (at least one image), else ``batch`` images per task.

    A stage that adds classes to a task replays that task's stored images (exemplars of its old classes, in their
    unchanged ids) and adds its own to them, so that the memory holds every class group learned so far. With ``mix``,
    a stage adding classes to classification trains on its stored images as on its own: they join the stage's training
    set (PNGs in ``<save_dir>/replay``), each drawn once per epoch with the stage's augmentation, in the same batches
    as the new images, instead of a separate loss term; with ``oversample`` each is drawn several times per epoch
    (`oversampling_factor`), so that an old class is trained on about as often as a new one. ``tasks`` limits the
    replay to some tasks (every stage still stores its own images).
    """

    key = "replay"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``replay``."""

        size: int | float = setting(10, "images of the stage's task kept at its end (a number below 1: that share)")
        ratio: float | None = setting(None, "replayed images per current image (null: batch)")
        batch: int = setting(2, "replayed images per task and step, without ratio (0: the stage only stores its own)")
        weight: float = setting(1.0, "weight of the replayed losses")
        mix: bool = setting(False, "stored classification images join a stage adding classes as its own data")
        oversample: bool = setting(False, "with mix, each drawn as often as an old class needs")
        tasks: list[Literal["seg", "det", "cls"]] = setting(
            list(TASKS), "the tasks it replays (every run still stores its own images)"
        )
        augment: bool = setting(False, "replayed images flipped, zoomed and shifted, their labels with them")
        distill: float = setting(0.0, "weight of the starting model's outputs on the replayed images as targets")
        temperature: float = setting(2.0, "softmax temperature of distill")

    @property
    def draws(self) -> bool:
        """Whether the stage trains on stored images (``batch`` or ``ratio`` above 0), not only stores its own."""
        return self.settings.batch > 0 or bool(self.settings.ratio)

    def replays(self, task: str) -> bool:
        """Whether this stage trains on stored images of `task`: it `draws`, the memory holds some, ``tasks`` names
        it."""
        return self.draws and bool(self.context.memory.get("replay", {}).get(task)) and task in self.settings.tasks

    def keeps_old_classes_of(self, task: str) -> bool:
        """When the stage replays images of the task (its old classes')."""
        return self.replays(task)

    def mixed(self, task: str) -> bool:
        """Whether the stored images of `task` join this stage's training set (``mix``) rather than a loss term."""
        return self.settings.mix and self.replays(task) and task == "cls" and task in self.context.old_classes

    def added_images(self, trainer, dataset) -> list[tuple[str, int]]:
        """With ``mix``: the stored classification images, written as PNGs to ``<save_dir>/replay``, to join the
        stage's training set (each as many times as ``oversample`` says)."""
        if not self.mixed(trainer.task_key):
            return []
        samples = self.context.memory["replay"]["cls"]
        repeat = oversampling_factor(dataset.samples, samples) if self.settings.oversample else 1
        added = []
        for i, sample in enumerate(samples):
            model_id = int(sample["cls"])
            path = Path(trainer.save_dir) / "replay" / f"{i:04d}-{model_id}.png"
            write_image(path, sample["img"])
            added += [(str(path), model_id)] * repeat
        times = f", each {repeat} times (oversample)" if repeat > 1 else ""
        LOGGER.info(f"replay: the {len(samples)} stored images of the old classes join the training images{times}")
        return added

    def setup(self, trainer) -> None:
        """Move the stored images of the finished tasks to the device (those that ``mix`` joins to the data aside)."""
        stored, replayed = self.context.memory.get("replay", {}), self.settings.tasks
        tasks = dict.fromkeys([*self.context.previous, *self.context.old_classes])
        self.buffers = {
            t: [training_form(s, trainer.device) for s in stored[t]]
            for t in tasks
            if self.replays(t) and not self.mixed(t)
        }
        if lacking := [t for t in self.context.old_classes if self.draws and t in replayed and not stored.get(t)]:
            LOGGER.warning(
                f"replay: no stored {', '.join(lacking)} images of the old classes in model={trainer.args.model} "
                "(a run with replay= keeps some in its best.pt); nothing of theirs is replayed"
            )
        self.rng = random.Random(int(trainer.args.seed))

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """Weighted sum of the finished tasks' losses on replayed images (per image, like the trainer's loss), and
        with ``distill`` the distance of their outputs to the stage's starting model's on the same images."""
        if not self.buffers:
            return None
        ratio, distill = self.settings.ratio, self.settings.distill
        k = max(1, round(ratio * batch["img"].shape[0])) if ratio else self.settings.batch
        teacher = self.context.teacher(batch["img"].device) if distill else None
        total = torch.zeros((), device=batch["img"].device)
        parts = {}
        for task, samples in self.buffers.items():
            drawn = self.rng.sample(samples, min(k, len(samples)))
            replayed = collate([random_zoom(s, self.rng) for s in drawn] if self.settings.augment else drawn)
            outputs = model.predict(replayed["img"])
            total = total + loss_per_image(model, outputs, replayed)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(replayed["img"])[-1]
                term = distill * task_distance(task, UnifiedLoss.raw(outputs), target, self.settings.temperature)
                parts[f"{self.key}_distill"] = parts.get(f"{self.key}_distill", 0.0) + term.detach()
                total = total + term
        total = self.settings.weight * total
        return total, {self.key: total.detach(), **parts}

    def stage_end(self, trainer, best: torch.nn.Module) -> None:
        """Store this stage's images for later stages (``size``: a number, or a share of the training images), and
        how many training images the stored ones were drawn from (``memory["replay_of"]``, for the summary)."""
        size, task, images = int(trainer.args.imgsz), self.context.task, training_images(trainer)
        samples = draw_samples(trainer, images, self.settings.size, seed=int(trainer.args.seed))
        kept = [stored_form(resize_sample(s, size)) for s in samples]
        memory = self.context.memory.setdefault("replay", {})
        seen = self.context.memory.setdefault("replay_of", {})
        grown = task in self.context.old_classes  # the old classes' images stay, beside the new ones
        memory[task] = (memory.get(task, []) if grown else []) + kept
        seen[task] = (seen.get(task, 0) if grown else 0) + len(images)
        LOGGER.info(f"replay: {len(kept)} of the {len(images)} {task} training images stored for later stages")
