"""Joint training's trainer: every task of the data YAML in one run, each optimizer step on batches of the tasks."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from copy import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, TQDM, colorstr
from ultralytics.utils.checks import check_imgsz
from ultralytics.utils.torch_utils import autocast, unwrap_model

from yolo_unified.balancing import Balancer, build_balancer
from yolo_unified.common import SHARED_MODULES, TASKS, ULTRALYTICS_TASK, listed, module_of
from yolo_unified.continual import StageContext, stage_samples
from yolo_unified.data.config import check_heads, labelled_images, load_data_config, task_names, write_image_list
from yolo_unified.data.sampling import JointLoader, TaskSampler, check_sampling
from yolo_unified.data.shared import SharedDataset, task_views
from yolo_unified.ddp import SameStart, average_gradients, from_rank_zero, mean_over_ranks
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.models.unified.joint.diagnostics import (
    DIAGNOSTICS,
    EpochMeans,
    combined_gradient_stats,
    item_means,
    step_gradient_stats,
    step_values,
    task_loss_means,
    write_diagnostics,
)
from yolo_unified.models.unified.joint.val import JointValidator, baseline_scores
from yolo_unified.models.unified.train import TRAINERS, UnifiedTrainerMixin, drop_rows_after
from yolo_unified.nn.tasks import UnifiedLoss, UnifiedModel, batch_task, loss_scale, select_images

SEQUENTIAL_ONLY = ("ewc", "replay")  # strategies that store memory of one stage's task at its end


def joint_tasks(wanted: str | list[str] | None, data_config: dict[str, Any], data: str) -> list[str]:
    """The tasks a joint run trains, in the model's order: ``tasks`` (a list, or ``seg,det`` on the command line), by
    default every task of the data YAML; a task the data does not have is an error naming it."""
    have = [t for t in TASKS if t in data_config["tasks"]]
    if not wanted:
        return have
    wanted = listed(wanted)
    if bad := [t for t in wanted if t not in have]:
        raise ValueError(f"tasks={wanted}: {data} has no {', '.join(map(str, bad))} data (it has {', '.join(have)})")
    return [t for t in TASKS if t in wanted]


def trained_tasks_only(key: str, value: Any, tasks: list[str]) -> dict[str, Any]:
    """A per-task setting (``task_args``, ``task_share``: a dict keyed by task) for the `tasks` a run trains: a
    recipe's entries for tasks the data does not have are left out with one info line, a key that is no task is an
    error naming it."""
    value = value or {}
    if not isinstance(value, dict) or not set(value) <= set(TASKS):
        raise ValueError(f"{key}={value!r}: give a dict keyed by task ({', '.join(TASKS)}), e.g. {{cls: ...}}")
    if skipped := [t for t in value if t not in tasks]:
        LOGGER.info(f"{colorstr('joint:')} {key}: {', '.join(skipped)} left out (this run trains {', '.join(tasks)})")
    return {t: v for t, v in value.items() if t in tasks}


def task_batches(model: UnifiedModel, batch: dict) -> list[tuple[str, dict, dict | None]]:
    """``(task, task batch, its outputs)`` of each task a batch has labels of.

    A batch of one task's own dataset is that task's batch, its outputs left to the loss to compute. A batch of
    shared images (`SharedDataset`) runs through the model once; each task gets the images that have its label
    (`task_views`) and their outputs, so an image without a task's label adds nothing to that task's loss.
    """
    if "tasks" not in batch:
        return [(batch_task(batch), batch, None)]
    raw = UnifiedLoss.raw(model(batch["img"]))
    return [(task, view, select_images(raw, index)) for task, (index, view) in task_views(batch).items()]


def task_losses(
    model: UnifiedModel, batches: dict[str, list[dict]], tasks: list[str], terms: Sequence[Any] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Each task's loss on its own labelled images only, and the task's loss items (mean over its batches).

    A task's loss is its Ultralytics loss plus the loss terms of `terms` (the strategies; none by default), on the
    scale of one image, summed over its batches of the step: Ultralytics sums detection and segmentation losses over
    a batch's images and averages classification's, so every task enters the balancing on the same footing. A batch
    of a task's own dataset is its own forward pass (its own BatchNorm statistics); a batch of shared images is one
    forward pass for all its tasks (`task_batches`). A task without a batch in the step gets a zero loss without a
    graph and no items.
    """
    device = next(model.parameters()).device
    losses = {task: torch.zeros((), device=device) for task in tasks}
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for batch in (b for stream in batches.values() for b in stream):
        for task, view, preds in task_batches(model, batch):
            loss, parts = model.loss(view, preds=preds, terms=terms)
            losses[task] = losses[task] + loss.sum() / loss_scale(view)
            counts[task] = counts.get(task, 0) + 1
            task_sums = sums.setdefault(task, {})
            for name, value in parts.items():
                task_sums[name] = task_sums.get(name, 0.0) + float(value)
    items = {task: {name: value / counts[task] for name, value in sums[task].items()} for task in sums}
    return losses, items


class TaskPart:
    """One task of a joint run: its data, loaders and loss names, and its Ultralytics trainer's work on them.

    A part is a plain object, not a trainer. It runs, on itself and unchanged, the functions of its task's unified
    trainer class (``trainer_class``, e.g. `UnifiedDetectionTrainer`) that the joint run needs: reading the task's
    data, building its dataset and loader, preprocessing a batch, plotting training samples and label statistics,
    building its validator, closing mosaic, giving its training image size. It holds what those functions read: its
    own ``args`` (the run's, with the task's Ultralytics task and its ``task_args``), ``data``, ``save_dir`` (the
    run's ``<task>/`` folder), loaders (set by the joint trainer as it builds them) and ``validator_class``; the run's
    ``device``, ``callbacks`` (its validator reports to them) and ``on_plot`` (its plots are the run's), and, once the
    run has them, its ``model`` and grid ``stride`` (set by the joint trainer). ``loss_names`` are the task's loss
    items. (A real task trainer, built by ``BaseTrainer.__init__``, would start a run of its own: seeds, ``weights/``
    and args.yaml in the task's folder, and the integrations' start callbacks, e.g. TensorBoard's writer moved to
    that folder.)
    """

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
        """Read this task's section of the data YAML (a clear error for a missing section or split), unless `data`
        is given."""
        self.task_key, self.trainer_class = task, TRAINERS[task]
        self.validator_class = self.trainer_class.validator_class
        self.args, self.save_dir = args, save_dir
        self.device, self.callbacks, self.on_plot = device, callbacks, on_plot
        self.model: torch.nn.Module | None = None
        self.stride: int | None = None
        self.train_loader: DataLoader | None = None
        self.test_loader: DataLoader | None = None
        self.loss_names: tuple[str, ...] = ()
        self.data = data or self.trainer_class.get_dataset(self)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Dataset:
        """The task's dataset at `img_path` for `mode` (training augmentation or validation transforms): its
        Ultralytics trainer's, as strategies add no images to a joint run's (``UnifiedTrainerMixin.build_dataset``)."""
        return super(UnifiedTrainerMixin, self.trainer_class).build_dataset(self, img_path, mode, batch)

    def get_dataloader(self, dataset_path: str, batch_size: int, rank: int, mode: str) -> DataLoader:
        """The task's loader of `dataset_path` for `mode`."""
        return self.trainer_class.get_dataloader(self, dataset_path, batch_size, rank, mode)

    def preprocess_batch(self, batch: dict) -> dict:
        """The task's preprocessing of a batch: on the device, images as floats in [0, 1] (multi-scale for det/seg).

        Ultralytics' own, skipping the single-task trainers' relabelling: a joint run's data has the model's classes
        (its model is checked to have heads for them).
        """
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
    """The tasks of a joint run labelled on shared images, as one training stream: a `SharedDataset` yields each
    image once, with the labels it has.

    It runs the detection trainer's functions (loader, preprocessing, training-sample plots, mosaic) on its ``data``:
    the detection section with the images labelled for any of its tasks as ``train``, the masks' folder and
    ``tasks``. Its folder is the run's ``<task>+<task>/``.
    """

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


class JointTrainer(UnifiedTrainerMixin, BaseTrainer):
    """Train every task of the multi-task data YAML in one run (``joint=True``; cfg/joint.yaml).

    Each task keeps its own Ultralytics dataset, loader, augmentation, preprocessing, loss and validator, held by
    one `TaskPart` per task; tasks labelled on shared images train as one stream (`SharedPart`: each image once,
    each task's loss on the images that have its label). Each optimizer step holds batches of the tasks
    (``task_sampling``; an epoch is as many steps as the largest training set has batches); every task's loss comes
    from its own images only; the
    ``balance`` method (yolo_unified.balancing, settings in ``balance_args``) combines the losses (loss-level
    methods) or the task gradients on the shared backbone, neck and tower (gradient-level methods). Progress bar,
    EMA, checkpoints (the same unified model), results.csv, resume and the strategies are the unified trainers';
    results.csv names every task's losses and metrics (``train/det/box_loss``, ``metrics/seg/mIoU``), best.pt is
    chosen by the multi-task fitness of `JointValidator`, and ``diagnostics.csv``/``.png`` record each epoch's task
    losses, balancer weights, task gradient norms and cosines.

    The loop is the trainer's own (`_do_train`: Ultralytics' ``BaseTrainer._do_train``, in one process, with the
    joint step in place of its forward and backward). Each step of `_train_epoch` draws the tasks' batches from the
    `JointLoader`; `_train_step` preprocesses each with its task's preprocessing, computes each task's loss with the
    strategies' loss terms (`task_losses`) and has the balancer combine them: a loss-level method returns the total,
    backpropagated there, a gradient-level method fills the gradients itself; the optimizer steps every
    ``accumulate`` steps (the strategies' gradient hooks first, then the EMA update). Nothing is attached to the model.
    On several processes (torchrun) the gradients are averaged over the ranks after each step (`_sync_gradients`).
    """

    task_key = "joint"

    def __init__(
        self,
        cfg=DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict | None = None,
        context: StageContext | None = None,
    ):
        """Read every task's data, check the sampling, build the balancer; the rest is the unified trainers'."""
        super().__init__(cfg, overrides, _callbacks, context)
        if unsupported := [s.key for s in self.strategies if s.key in SEQUENTIAL_ONLY]:
            raise ValueError(
                f"{', '.join(unsupported)}: these strategies keep memory of a sequential stage's single task; "
                "joint training does not support them"
            )
        if self.args.compile:
            LOGGER.warning("compile=True: joint steps run eagerly (each task is its own forward pass); compile off")
            self.args.compile = False
        self.shares = self.task_shares()
        check_sampling(self.args.task_sampling, self.args.task_tau, self.shares)
        self.balancer = self.build_balancer().to(self.device)
        self.baselines = baseline_scores(self.args.baselines, self.tasks) if self.args.baselines else None
        self.shared: list[torch.nn.Parameter] = []
        self.epoch_means = EpochMeans()
        LOGGER.info(
            f"{colorstr('joint:')} {', '.join(self.tasks)}; task_sampling={self.args.task_sampling}, "
            f"balance={self.balancer.key} ({self.balancer.kind}-level)"
        )

    def _setup_train(self) -> None:
        """Ultralytics' setup; with several processes the model is not wrapped in DistributedDataParallel: every rank
        starts from rank 0's weights, and the joint step averages the gradients itself (`_sync_gradients`)."""
        with patch.object(torch.nn.parallel, "DistributedDataParallel", SameStart):
            BaseTrainer._setup_train(self)

    def build_balancer(self) -> Balancer:
        """The ``balance`` method for the tasks, with ``balance_args``; errors name the keys."""
        settings = self.args.balance_args or {}
        if not isinstance(settings, dict):
            raise ValueError(f"balance_args={settings!r}: give the method's settings as a dict, e.g. {{weights: ...}}")
        try:
            return build_balancer(self.args.balance, self.tasks, **settings)
        except (TypeError, ValueError, ImportError) as e:  # TypeError: a setting the method does not take
            raise ValueError(f"balance={self.args.balance} balance_args={settings}: {e}") from e

    def get_dataset(self) -> dict[str, Any]:
        """Read the data YAML and set up one part per task in it (a clear error names a missing section or split)."""
        try:
            self.data_config = load_data_config(self.args.data)
        except (FileNotFoundError, ValueError) as e:
            raise RuntimeError(f"Dataset '{self.args.data}' error: {e}") from e
        self.tasks = joint_tasks(self.args.tasks, self.data_config, self.args.data)
        task_args = trained_tasks_only("task_args", self.args.task_args, self.tasks)
        self.parts: dict[str, TaskPart] = {}
        for t in self.tasks:
            args = self.part_args(t, task_args.get(t) or {})
            self.parts[t] = TaskPart(t, args, self.save_dir / t, self.device, self.callbacks, self.on_plot)
        self.streams = self.training_streams(task_args)
        return {"channels": 3, **dict.fromkeys(("train", self.args.split), self.args.data)}

    def training_streams(self, task_args: dict[str, Any]) -> dict[str, TaskPart]:
        """What each step draws training batches from: a task's own dataset (its part), or, for the tasks labelled on
        shared images (two or more of them in the run), one `SharedPart` named ``seg+det``. Tasks on shared images
        train with one set of train keys: different ``task_args`` for them are an error."""
        shared = [t for t in self.tasks if self.data_config["tasks"][t].get("shared")]
        if len(shared) < 2:
            return dict(self.parts)
        if len({str(task_args.get(t) or {}) for t in shared}) > 1:
            raise ValueError(
                f"task_args={task_args}: {', '.join(shared)} share their images and train in one batch; give them "
                "the same keys (or none)"
            )
        union = sorted({f for files in labelled_images(self.data_config, "train").values() for f in files})
        data = {
            **self.parts["det"].data,
            "train": str(write_image_list(self.data_config, "train", shared, union)),
            "masks_dir": self.data_config["tasks"]["seg"].get("masks_dir", "masks"),
            "tasks": shared,
        }
        streams: dict[str, TaskPart] = {"+".join(shared): SharedPart({t: self.parts[t] for t in shared}, data)}
        return {**streams, **{t: part for t, part in self.parts.items() if t not in shared}}

    def part_args(self, task: str, own: dict[str, Any]) -> SimpleNamespace:
        """The joint run's arguments with the task's Ultralytics task and its ``task_args`` keys."""
        if unknown := sorted(set(own) - set(DEFAULT_CFG_DICT)):
            raise ValueError(f"task_args: unknown key(s) {unknown} for {task}; valid keys are the train keys")
        return get_cfg(dict(vars(self.args)), {**own, "task": ULTRALYTICS_TASK[task]})

    def task_shares(self) -> dict[str, float]:
        """Each training stream's share of the steps (``task_share`` of its task; a task left out: 1; check_sampling
        checks the values); the share of a task the run does not train (``tasks=seg,det`` with cfg/joint.yaml) is
        ignored. Tasks on shared images are one stream: it takes the largest of their shares (one info line when
        they differ, e.g. cfg/joint.yaml's ``det: 0.5`` on detection and segmentation sharing their images)."""
        given = trained_tasks_only("task_share", self.args.task_share, self.tasks)
        shares = {}
        for name in self.streams:
            values = {t: given.get(t, 1.0) for t in name.split("+")}
            shares[name] = max(values.values())
            if len(set(values.values())) > 1:
                LOGGER.info(
                    f"{colorstr('joint:')} task_share {values}: {name} share their images, so one share for them: "
                    f"{shares[name]:g}"
                )
        return shares

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """The unified model; a unified checkpoint given as ``model=`` must have heads for the data's class counts."""
        if isinstance(weights, UnifiedModel) and str(self.args.model).endswith(".pt"):
            data = {t: names for t, names in task_names(self.data_config).items() if t in self.tasks}
            check_heads(weights.task_names, data, self.args.model, self.args.data)
        return super().get_model(cfg, weights, verbose)

    def model_names(self, weights: torch.nn.Module | None) -> tuple[dict[str, dict[int, str]], dict[str, dict]]:
        """The data's class names over those of `weights` (whose heads match them: `get_model`); a joint run adds no
        classes."""
        return {**(getattr(weights, "task_names", None) or {}), **task_names(self.data_config)}, {}

    def use_class_list(self, model: UnifiedModel, learned: set[str]) -> None:
        """Nothing to renumber: the model's classes are the data's."""

    def trained_imgsz(self) -> dict[str, int]:
        """Each task's image size (its own ``imgsz`` in ``task_args``, else the run's), as its trainer gives it."""
        return {task: size for part in self.parts.values() for task, size in part.trained_imgsz().items()}

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """The unified trainers' optimizer, plus a group for the balancer's learnable weights (no weight decay)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if params := list(self.balancer.parameters()):
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0, "param_group": "balancer"})
        return optimizer

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """Every task's own loader for `mode` (its trainer's, on its own split and batch size), as one JointLoader.

        `batch_size` is what Ultralytics chose for the run's ``batch``; a task with its own ``batch`` in
        ``task_args`` gets it scaled alike. The parts get the run's model and grid size first (their datasets read
        the model's strides; classification's loader sets the model's inference transforms).
        """
        split = "train" if mode == "train" else self.args.split
        loaders = {}
        for name, part in (self.streams if mode == "train" else self.parts).items():
            part.model, part.stride = self.model, self.stride
            part.args.imgsz = check_imgsz(part.args.imgsz, stride=self.stride, floor=self.stride, max_dim=1)
            part_batch = max(batch_size * part.args.batch // self.args.batch, 1)
            loaders[name] = part.get_dataloader(part.data[split], part_batch, rank, mode)
            setattr(part, "train_loader" if mode == "train" else "test_loader", loaders[name])
            if mode == "train":  # the tasks of a shared stream read its loader (their label plots)
                for task in name.split("+"):
                    self.parts[task].train_loader = loaders[name]
        sizes = {name: len(loader.dataset) for name, loader in loaders.items()}
        if mode != "train":
            return JointLoader(loaders, TaskSampler(sizes))
        sampler = TaskSampler(sizes, self.args.task_sampling, self.args.task_tau, self.args.seed, self.shares)
        loader = JointLoader(loaders, sampler)
        if self.args.task_sampling == "round_robin":
            how = "a batch of every task" + "".join(
                f", {t} in {share:.0%} of them" for t, share in self.shares.items() if share < 1
            )
        else:
            p = loader.task_sampler.probabilities
            how = f"{len(loaders)} batches of tasks drawn with " + ", ".join(f"{t} p={p[t]:.2f}" for t in p)
        LOGGER.info(f"{colorstr('joint:')} {len(loader)} steps an epoch, each with {how} ({sizes} images)")
        return loader

    def preprocess_batch(self, batch: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Each stream's batches of a step through its own preprocessing."""
        return {name: [self.streams[name].preprocess_batch(b) for b in batches] for name, batches in batch.items()}

    def _setup_strategies(self) -> None:
        """Set the strategies up; their loss terms are the joint step's to add (nothing goes on the model)."""
        for s in self.strategies:
            s.setup(self)

    def _setup_step(self) -> None:
        """Once the model, optimizer and EMA exist: the shared parameters, each task's loss names, the AMP scaler."""
        model = unwrap_model(self.model)
        self.shared = [p for n, p in model.named_parameters() if module_of(n) in SHARED_MODULES]
        model.eval()  # loss names from one validation image of each task, no state changed (training sets train mode)
        with torch.no_grad():
            for part in self.parts.values():
                part.loss_names = tuple(model.loss(stage_samples(part, 1)[0], terms=self.strategies)[1])
        self.loss_names = tuple(f"{t}/{n}" for t, part in self.parts.items() for n in part.loss_names)
        if RANK in {-1, 0}:  # DDP: rank 0 holds the metrics
            self.metrics.update(dict.fromkeys(self.label_loss_items(prefix="val"), 0.0))
        if self.balancer.kind == "gradient" and self.scaler.is_enabled():
            LOGGER.warning(f"balance={self.balancer.key}: the AMP gradient scaler is off (it would change the method)")
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    def _do_train(self) -> None:
        """Set up, train epoch after epoch (validating, saving and stopping as Ultralytics does), then finish."""
        self._setup_train()
        self._setup_step()
        self._start_training()
        epoch = self.start_epoch
        while True:
            self.epoch = epoch
            self._train_epoch(epoch)
            final_epoch = epoch + 1 >= self.epochs
            self._end_epoch(final_epoch)
            if self._handle_nan_recovery(epoch):  # the epoch is trained again from last.pt
                self.last_opt_step = -1
                self.optimizer.zero_grad()
                continue
            self.nan_recovery_attempts = 0
            self._save_epoch(epoch, final_epoch)
            if self.stop:
                break
            epoch += 1
        self._finish_training(epoch)

    def _start_training(self) -> None:
        """Warmup length, the nominal ``accumulate``, the clocks, on_train_start, the close-mosaic plots and gate."""
        nb = len(self.train_loader)
        self.warmup_steps = self._get_warmup_iterations(nb)
        self.nominal_accumulate = self.accumulate  # warmup ramps accumulate up to it
        self.last_opt_step = -1
        self.epoch_time = None
        self.epoch_time_start = self.train_time_start = time.time()
        self.run_callbacks("on_train_start")
        LOGGER.info(
            f"Using {len(self.train_loader.dataset)} train, {len(self.test_loader.dataset)} val images for "
            f"fraction={self.args.fraction} at imgsz={self.args.imgsz}\n"
            f"Using {self.train_loader.num_workers} dataloader workers\n"
            f"Logging results to {colorstr('bold', self.save_dir)}\n"
            f"Starting training for " + (f"{self.args.time} hours..." if self.args.time else f"{self.epochs} epochs...")
        )
        if self.args.close_mosaic:
            first = (self.epochs - self.args.close_mosaic) * nb  # plot the first steps without mosaic too
            self.plot_idx.extend([first, first + 1, first + 2])
        self.mosaic_closed = not self.args.close_mosaic
        self.optimizer.zero_grad()

    def _start_epoch(self, epoch: int) -> None:
        """New epoch means, the task sampler at the epoch's first step (a resumed run goes on alike), callbacks, the
        scheduler step, train mode, and mosaic closed once the last ``close_mosaic`` epochs begin."""
        self.epoch_means = EpochMeans()
        self.train_loader.task_sampler.step = epoch * len(self.train_loader)
        self.train_loader.set_epoch(epoch)
        self.run_callbacks("on_train_epoch_start")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'Detected lr_scheduler.step() before optimizer.step()'
            self.scheduler.step()
        self._model_train()
        if not self.mosaic_closed and epoch >= self.epochs - self.args.close_mosaic:
            self.mosaic_closed = True
            self._close_dataloader_mosaic()
            self.train_loader.reset()
        LOGGER.info(self.progress_string())

    def _train_epoch(self, epoch: int) -> None:
        """One epoch of joint steps; the optimizer steps every ``accumulate`` steps (or the run's time runs out)."""
        self._start_epoch(epoch)
        nb = len(self.train_loader)
        pbar = TQDM(enumerate(self.train_loader), total=nb, disable=RANK > 0)
        self.tloss = None
        for i, batches in pbar:  # a step's batches, {task: [batch, ...]}, drawn by the JointLoader
            self.run_callbacks("on_train_batch_start")
            ni = i + nb * epoch
            self._warmup(ni, epoch)
            batches = self._train_step(batches)
            if ni - self.last_opt_step >= self.accumulate:
                self.optimizer_step()
                self.last_opt_step = ni
                if self.args.time:
                    self.stop = from_rank_zero(self._time_is_up())
                    if self.stop:
                        break
            self._log_step(pbar, batches, epoch, ni)
            self.run_callbacks("on_train_batch_end")
            if self.stop:
                break  # an external stop (a callback) between steps
        self.lr = {f"lr/pg{ir}": x["lr"] for ir, x in enumerate(self.optimizer.param_groups)}

    def _warmup(self, ni: int, epoch: int) -> None:
        """Ultralytics' warmup over the first steps: ``accumulate`` rises from 1 to its nominal value, the bias
        learning rate falls from ``warmup_bias_lr`` and every other one rises from 0 to its scheduled value,
        momentum rises from ``warmup_momentum``; step `ni` == the warmup length lands them on their targets."""
        if not self.warmup_steps or ni > self.warmup_steps:
            return
        xi = [0, self.warmup_steps]
        self.accumulate = max(1, int(np.interp(ni, xi, [1, self.nominal_accumulate]).round()))
        for group in self.optimizer.param_groups:
            start = self.args.warmup_bias_lr if group.get("param_group") == "bias" else 0.0
            group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * self.lf(epoch)]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(ni, xi, [self.args.warmup_momentum, self.args.momentum]))

    def _train_step(self, batches: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """One step's gradients: each task's batches through its own preprocessing and loss (with the strategies'
        loss terms), combined by the balancer (a loss-level total is backpropagated here, a gradient-level method
        fills the gradients itself). Returns the preprocessed batches; the step's loss is ``loss``, the epoch's
        running loss items ``tloss``. Gradient statistics: `step_gradient_stats`, `combined_gradient_stats`."""
        with autocast(torch.bfloat16 if self.args.amp == "bf16" else self.amp, device=self.device.type):
            batches = self.preprocess_batch(batches)
            losses, items = task_losses(unwrap_model(self.model), batches, self.tasks, self.strategies)
        stats = step_gradient_stats(self.epoch_means, losses, self.shared, self.balancer)
        total, weights = self.balancer.combine(losses, self.shared)
        stats = combined_gradient_stats(self.balancer, stats)
        if total is not None:
            self.scaler.scale(total).backward()
        self._sync_gradients()
        self.loss = (sum(losses.values()) if total is None else total).detach()
        self.epoch_means.add(step_values(losses, items, weights, stats))
        self.tloss = item_means(self.epoch_means, self.loss_names)
        return batches

    def _sync_gradients(self) -> None:
        """With several processes: every gradient averaged over the ranks (the model's and the balancer's learnable
        weights'), as DistributedDataParallel's backward would. A gradient-level method has already combined the
        task gradients averaged over the ranks (`yolo_unified.balancing.gradient`), so its shared gradients are the
        same on every rank: the result equals one process whose task losses are the means of the ranks' losses."""
        if self.world_size > 1:
            params = [*unwrap_model(self.model).parameters(), *self.balancer.parameters()]
            average_gradients(p for p in params if p.requires_grad)

    def _log_step(self, pbar: TQDM, batches: dict[str, list[dict]], epoch: int, ni: int) -> None:
        """The progress bar: the epoch's running loss items, the size and image size of the step's first batch; the
        training samples plotted at the steps of ``plot_idx``."""
        img = next(iter(batches.values()))[0]["img"]
        pbar.set_description(
            ("%11s" * 2 + "%11.4g" * (2 + len(self.tloss)))
            % (
                f"{epoch + 1}/{self.epochs}",
                f"{self._get_memory():.3g}G",
                *self.tloss.values(),
                len(img),
                img.shape[-1],
            )
        )
        if self.args.plots and ni in self.plot_idx:
            self.plot_training_samples(batches, ni)

    def _end_epoch(self, final_epoch: bool) -> None:
        """The epoch's end: the balancer's epoch end and the diagnostics row, on_train_epoch_end, the EMA's
        attributes, and validation when ``val``, the last epoch, a possible early stop or a stop asks for it."""
        self._record_epoch()
        self.run_callbacks("on_train_epoch_end")
        self.ema.update_attr(self.model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])
        if from_rank_zero(self.args.val or final_epoch or self.stopper.possible_stop or self.stop):  # DDP: all ranks
            self._clear_memory(None if self.device.type == "mps" else 0.5)
            self.metrics, self.fitness = self.validate()

    def _record_epoch(self) -> None:
        """Give the balancer the epoch's task losses; write and plot the epoch's diagnostics."""
        means = task_loss_means(self.epoch_means, self.tasks)
        (averaged,) = mean_over_ranks([torch.tensor(list(means.values()))])  # DDP: the ranks' means, averaged
        self.balancer.epoch_end(dict(zip(means, averaged.tolist(), strict=True)))
        if RANK in {-1, 0}:
            write_diagnostics(self.save_dir / DIAGNOSTICS, self.epoch + 1, self.epoch_means, self.tasks)

    def _save_epoch(self, epoch: int, final_epoch: bool) -> None:
        """The epoch's results.csv row, the early-stopping check, checkpoints, the time budget, on_fit_epoch_end (DDP:
        rank 0 writes and decides whether to stop, for every rank)."""
        if RANK in {-1, 0}:
            self.save_metrics(metrics={**self.label_loss_items(self.tloss), **self.metrics, **self.lr})
            self.stop |= self.stopper(epoch + 1, self.fitness) or final_epoch
            if self.args.time:
                self.stop |= self._time_is_up()
            if (self.args.save or final_epoch) and self.save_model():
                self.run_callbacks("on_model_save")
        self.stop = from_rank_zero(self.stop)
        now = time.time()
        self.epoch_time, self.epoch_time_start = now - self.epoch_time_start, now
        if self.args.time:
            self._fit_epochs_to_time(epoch, now)
        self.run_callbacks("on_fit_epoch_end")
        self._clear_memory(None if self.device.type == "mps" else 0.5)

    def _time_is_up(self) -> bool:
        """Whether the run has trained for its ``time`` (hours)."""
        return time.time() - self.train_time_start > self.args.time * 3600

    def _fit_epochs_to_time(self, epoch: int, now: float) -> None:
        """With ``time``: the epochs that fit the time at the mean epoch time so far, the warmup and learning-rate
        schedule over them, and a stop once they are done."""
        mean_epoch_time = (now - self.train_time_start) / (epoch - self.start_epoch + 1)
        self.epochs = self.args.epochs = math.ceil(self.args.time * 3600 / mean_epoch_time)
        self.warmup_steps = self._get_warmup_iterations(len(self.train_loader))
        self._setup_scheduler()
        self.scheduler.last_epoch = self.epoch
        self.stop |= epoch >= self.epochs

    def _finish_training(self, epoch: int) -> None:
        """Validate best.pt, plot results.csv, on_train_end, and shut the loaders' workers down."""
        hours = (time.time() - self.train_time_start) / 3600
        LOGGER.info(f"\n{epoch - self.start_epoch + 1} epochs completed in {hours:.3f} hours.")
        self.final_eval()
        if self.args.plots and RANK in {-1, 0}:
            self.plot_metrics()
        self.run_callbacks("on_train_end")
        self._clear_memory()
        self.train_loader.close()
        self.test_loader.close()

    def save_model(self) -> bool:
        """The unified trainers' checkpoints; last.pt also holds the balancer's state (learnable weights, history)."""
        saved = super().save_model()
        if saved:
            ckpt = read_checkpoint(self.last)
            ckpt["balancer"] = {k: v.cpu() for k, v in self.balancer.state_dict().items()}
            save_atomically(ckpt, self.last)
        return saved

    def resume_training(self, ckpt) -> None:
        """The unified trainers' resume, plus the balancer's state and diagnostics.csv rows up to the checkpoint."""
        super().resume_training(ckpt)
        if ckpt is not None and self.resume:
            if ckpt.get("balancer"):
                self.balancer.load_state_dict(ckpt["balancer"])
            drop_rows_after(self.save_dir / DIAGNOSTICS, self.start_epoch)

    def get_validator(self) -> JointValidator:
        """Every task's unified validator."""
        return JointValidator(self.parts, self.args, self.baselines)

    def set_class_weights(self) -> None:
        """Class weights (``cls_pw``) are per task, and the unified loss holds one set: not applied jointly."""
        if self.args.cls_pw:
            LOGGER.warning(f"cls_pw={self.args.cls_pw}: class weights are not applied in joint training")

    def _close_dataloader_mosaic(self) -> None:
        """Close mosaic in every training stream's loader."""
        for part in self.streams.values():
            part.close_mosaic()

    def progress_string(self) -> str:
        """Header of the progress bar: each task's loss items (``det/box``), the batch size and the image size."""
        names = [name.replace("_loss", "") for name in self.loss_names]
        return ("\n" + "%11s" * (4 + len(names))) % ("Epoch", "GPU_mem", *names, "Batch", "Size")

    def plot_training_samples(self, batch: dict[str, list[dict]], ni: int) -> None:
        """Each stream's first batch of the step, plotted by its part into its folder."""
        for name, batches in batch.items():
            self.streams[name].plot_training_samples(copy(batches[0]), ni)

    def plot_training_labels(self) -> None:
        """Each task's label statistics, plotted by its part into its folder."""
        for part in self.parts.values():
            part.plot_training_labels()
