"""The interface every forgetting-mitigation strategy implements, and what a strategy knows about its stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, default_collate

from yolo_unified.data.classes import remap_labels
from yolo_unified.files import load_checkpoint
from yolo_unified.settings import parse_settings


@dataclass
class StageContext:
    """What a stage's strategies know: the stage, the tasks finished before it, and the memory they left.

    ``memory`` is shared by all stages of a protocol: strategies read what earlier stages stored (Fisher, anchors,
    replay images) and add their own at the end of the stage; the protocol saves it between stages.
    """

    index: int  # 0-based stage number
    task: str  # task of this stage: seg, det or cls (a joint stage: its tasks joined by "+", e.g. seg+det)
    previous: list[str] = field(default_factory=list)  # tasks finished before this stage, in order
    own_scores: dict[str, float] = field(default_factory=dict)  # score of each finished task right after its stage
    eval_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per finished task: its validation batch
    prev_weights: str | None = None  # checkpoint the stage starts from (the previous stage's best.pt)
    data: str = ""  # multi-task data YAML
    memory: dict[str, Any] = field(default_factory=dict)
    forget_limit: float = 0.05
    old_classes: dict[str, int] = field(default_factory=dict)  # task -> classes it had before this stage added some
    root: Path = Path(".")
    # scores a model on finished tasks: evaluate(model, tasks=[...], save_dir=..., **eval_args) -> {task: {metric: v}}
    evaluate: Callable[..., dict[str, dict[str, float]]] | None = None
    _teacher: Any = field(default=None, init=False, repr=False)
    _taught: tuple[torch.Tensor, Any] | None = field(default=None, init=False, repr=False)

    def teacher(self, device: torch.device) -> torch.nn.Module | None:
        """The frozen model the stage starts from (``prev_weights``, in eval mode), loaded once; None in a first stage
        (one that neither follows finished tasks nor adds classes to a task the model has).

        Every strategy that compares the model with its former self (LwF, pseudo-labels, feature distillation) uses
        this one copy: a resumed stage distils from the same teacher, as ``prev_weights`` is the previous stage's best.
        """
        if self._teacher is None and (self.previous or self.old_classes) and self.prev_weights:
            self._teacher = load_checkpoint(self.prev_weights)[0].float().to(device).eval().requires_grad_(False)
        return self._teacher

    @torch.no_grad()
    def teacher_outputs(self, img: torch.Tensor) -> tuple:
        """The teacher's inference outputs ``(det, seg, cls, raw)`` on `img`, computed once per batch for all users."""
        if self._taught is None or self._taught[0] is not img:
            self._taught = (img, self.teacher(img.device)(img))
        return self._taught[1]


@dataclass(frozen=True)
class NoSettings:
    """The settings of a strategy that has none: it is switched on with True."""


class Strategy:
    """A forgetting-mitigation strategy: one file, one cfg key, switched on and tuned per stage.

    ``key`` names its setting in the cfg (``ewc: {lam: ...}``); ``Settings`` is the frozen dataclass of its settings,
    each with its type, default and meaning (`yolo_unified.settings.setting`). The trainer builds one instance per
    stage from that cfg value and calls the hooks below at the named points of Ultralytics' training loop. Every hook
    is optional.
    """

    key: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    scalar: ClassVar[str | None] = None  # the setting a plain value sets (``clip_grad: 1.0`` -> its max_norm)
    keeps_old_classes: ClassVar[bool] = False  # it acts on the old classes of the tasks a stage adds classes to only

    def __init__(self, cfg: Any, context: StageContext):
        """Read the cfg value (a mapping of settings, True for the defaults, or the value of `scalar`) into
        ``settings`` (unknown keys and wrong types fail naming the key) and keep the stage context."""
        self.settings = parse_settings(self.Settings, cfg, self.key, self.scalar)
        self.context = context

    def keeps_old_classes_of(self, task: str) -> bool:
        """Whether it keeps the old classes of `task` when a stage adds classes to it (what the run says it does)."""
        return self.keeps_old_classes

    def setup(self, trainer) -> None:
        """Once the model, optimizer and EMA exist (Ultralytics' ``on_pretrain_routine_end``)."""

    def lr_multipliers(self) -> dict[str, float]:
        """Learning-rate multiplier per module group; applied when the optimizer is built."""
        return {}

    def loss(self, model: torch.nn.Module, preds: dict, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """An extra term for the batch's training loss, with its named parts for the progress bar (None: no term).

        The term is per image: the trainer scales it by the batch size where Ultralytics' task loss is summed.
        """
        return None

    def added_images(self, trainer, dataset) -> list[tuple[str, int]]:
        """Classification images to join the stage's training set (built, before its loader): image files, each with
        its class in the model's ids (an image listed twice is drawn twice per epoch). The trainer adds them."""
        return []

    def labels(self, batch: dict) -> dict:
        """The training batch the task loss sees, after preprocessing: a strategy may add labels (old classes)."""
        return batch

    def before_optimizer_step(self, trainer) -> None:
        """After backward and gradient unscaling, before the optimizer step."""

    def after_model_train(self, trainer) -> None:
        """After Ultralytics puts the model in train mode at the start of every epoch."""

    def accept_epoch(self, trainer) -> bool:
        """After each epoch's validation: False vetoes this epoch's weights as the stage's best."""
        return True

    def stop_stage(self) -> bool:
        """After `accept_epoch`: True ends the stage after this epoch."""
        return False

    def stage_end(self, trainer, best: torch.nn.Module) -> None:
        """After the stage, with its best model: store what later stages need in ``context.memory``."""


def memory_size(size: int | float, available: int) -> int:
    """How many of `available` training images a memory of `size` keeps: `size` images (an int), or that share of
    them (a float below 1: ``0.1`` keeps 10%, rounded down, at least one)."""
    if isinstance(size, float) and 0 < size < 1:
        return max(1, int(size * available))
    return min(int(size), available)


def stage_samples(trainer, n: int | float, seed: int = 0) -> list[dict[str, Any]]:
    """`n` single-image batches (a float below 1: that share, `memory_size`) from the stage's train split with
    validation transforms (no augmentation): `draw_samples` of `training_images`."""
    return draw_samples(trainer, training_images(trainer), n, seed)


def training_images(trainer) -> Dataset:
    """The stage's train split as Ultralytics builds it for validation (no augmentation, no added images)."""
    return trainer.build_dataset(trainer.data["train"], mode="val", batch=1)


def draw_samples(trainer, dataset: Dataset, n: int | float, seed: int = 0) -> list[dict[str, Any]]:
    """`n` single-image batches of `dataset` (a float below 1: that share, `memory_size`), drawn by `seed`.

    Images come out as float tensors in [0, 1] on the trainer's device, labels in Ultralytics' batch format and in
    the model's class ids (the trainer's ``class_lut``, where the data numbers them otherwise).
    """
    kept = memory_size(n, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:kept].tolist()
    collate = getattr(dataset, "collate_fn", default_collate)
    batches = []
    for i in order:
        batch = collate([dataset[i]])
        batch = {k: v.to(trainer.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if batch["img"].dtype == torch.uint8:
            batch["img"] = batch["img"].float() / 255
        if (lut := getattr(trainer, "class_lut", None)) is not None:
            batch = remap_labels(batch, trainer.task_key, lut)
        batches.append(batch)
    return batches
