"""Joint training's trainer: every task of the data YAML in one run, each optimizer step on batches of the tasks.

The loop is Ultralytics' ``BaseTrainer._do_train``; one step of it is one joint step, whose loss
(`JointTrainer.step_loss`) is every task's loss combined by the balancing method.
"""

from __future__ import annotations

from copy import copy
from functools import partial
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import torch
from ultralytics.cfg import get_cfg
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr
from ultralytics.utils.checks import check_imgsz
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.balancing import Balancer, build_balancer
from yolo_unified.common import SHARED_MODULES, TASKS, ULTRALYTICS_TASK, listed, module_of
from yolo_unified.continual import StageContext, stage_samples
from yolo_unified.data.config import check_heads, labelled_images, load_data_config, task_names, write_image_list
from yolo_unified.data.sampling import JointLoader, TaskSampler, check_sampling
from yolo_unified.ddp import SameStart, average_gradients, mean_over_ranks
from yolo_unified.defaults import train_keys
from yolo_unified.files import read_checkpoint, save_atomically
from yolo_unified.models.unified.checkpoints import drop_rows_after
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
from yolo_unified.models.unified.joint.parts import SharedPart, TaskPart
from yolo_unified.models.unified.joint.step import task_losses
from yolo_unified.models.unified.joint.val import JointValidator, baseline_scores
from yolo_unified.models.unified.train import UnifiedTrainerMixin
from yolo_unified.nn.tasks import STEP, UnifiedModel

SEQUENTIAL_ONLY = ("ewc", "replay")  # strategies that store memory of one stage's task at its end


def joint_tasks(wanted: str | list[str] | None, data_config: dict[str, Any], data: str) -> list[str]:
    """The tasks a joint run trains, in the model's order: ``tasks``, by default every task of the data YAML."""
    have = [t for t in TASKS if t in data_config["tasks"]]
    if not wanted:
        return have
    wanted = listed(wanted)
    if bad := [t for t in wanted if t not in have]:
        raise ValueError(f"tasks={wanted}: {data} has no {', '.join(map(str, bad))} data (it has {', '.join(have)})")
    return [t for t in TASKS if t in wanted]


def trained_tasks_only(key: str, value: Any, tasks: list[str]) -> dict[str, Any]:
    """A per-task setting (a dict keyed by task) for the `tasks` a run trains; a key that is no task is an error."""
    value = value or {}
    if not isinstance(value, dict) or not set(value) <= set(TASKS):
        raise ValueError(f"{key}={value!r}: give a dict keyed by task ({', '.join(TASKS)}), e.g. {{cls: ...}}")
    if skipped := [t for t in value if t not in tasks]:
        LOGGER.info(f"{colorstr('joint:')} {key}: {', '.join(skipped)} left out (this run trains {', '.join(tasks)})")
    return {t: v for t, v in value.items() if t in tasks}


class JointTrainer(UnifiedTrainerMixin, BaseTrainer):
    """Train every task of the multi-task data YAML in one run (``joint=True``; cfg/joint.yaml).

    Each task keeps its own Ultralytics dataset, loader, preprocessing, loss and validator (one `TaskPart` per task;
    tasks on shared images train as one `SharedPart` stream). A step holds batches of the tasks (``task_sampling``),
    each task's loss on its own images, combined by ``balance``. best.pt is chosen by `JointValidator`'s multi-task
    fitness; ``diagnostics.csv`` records each epoch's task losses, balancer weights and gradient norms and cosines.
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
        self.add_callback("on_train_epoch_start", JointTrainer._start_epoch)
        self.callbacks["on_train_epoch_end"].insert(0, JointTrainer._end_epoch)  # before any logger reads tloss
        LOGGER.info(
            f"{colorstr('joint:')} {', '.join(self.tasks)}; task_sampling={self.args.task_sampling}, "
            f"balance={self.balancer.key} ({self.balancer.kind}-level)"
        )

    def _setup_train(self) -> None:
        """Ultralytics' setup, then the step's; DDP: no wrapper, rank 0's weights (`optimizer_step` averages)."""
        with patch.object(torch.nn.parallel, "DistributedDataParallel", SameStart):
            BaseTrainer._setup_train(self)
        self._setup_step()

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
        self.parts_batch = self.args.batch  # the run's batch, which the parts' batches are relative to
        for t in self.tasks:
            args = self.part_args(t, task_args.get(t) or {})
            self.parts[t] = TaskPart(t, args, self.save_dir / t, self.device, self.callbacks, self.on_plot)
        self.streams = self.training_streams(task_args)
        return {"channels": 3, **dict.fromkeys(("train", self.args.split), self.args.data)}

    def training_streams(self, task_args: dict[str, Any]) -> dict[str, TaskPart]:
        """What each step draws batches from: a task's part, or one `SharedPart` (``seg+det``) for the tasks on shared
        images, which must have the same ``task_args``."""
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
        if unknown := sorted(set(own) - train_keys()):
            raise ValueError(f"task_args: unknown key(s) {unknown} for {task}; valid keys are the train keys")
        return get_cfg(dict(vars(self.args)), {**own, "task": ULTRALYTICS_TASK[task]})

    def task_shares(self) -> dict[str, float]:
        """Each training stream's share of the steps (``task_share``, default 1; a shared stream: its largest)."""
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
        """The data's class names over those of `weights`; a joint run adds no classes."""
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
        """Every task's own loader for `mode` as one JointLoader; a task's own ``batch`` scales with `batch_size`
        (an out-of-memory retry halves them all)."""
        split = "train" if mode == "train" else self.args.split
        loaders = {}
        for name, part in (self.streams if mode == "train" else self.parts).items():
            part.model, part.stride = self.model, self.stride
            part.args.imgsz = check_imgsz(part.args.imgsz, stride=self.stride, floor=self.stride, max_dim=1)
            part_batch = max(batch_size * part.args.batch // self.parts_batch, 1)
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

    def preprocess_batch(self, batch: dict[str, list[dict]]) -> dict[str, Any]:
        """A step's batches, each through its stream's preprocessing, as the loop's one batch: ``batches``, ``img``
        (the first one's, for the progress bar) and ``STEP`` (`step_loss` on them)."""
        batches = {name: [self.streams[name].preprocess_batch(b) for b in bs] for name, bs in batch.items()}
        first = next(iter(batches.values()))[0]
        return {"img": first["img"], "batches": batches, STEP: partial(self.step_loss, batches)}

    def _setup_strategies(self) -> None:
        """Set the strategies up; their loss terms are the joint step's to add (nothing goes on the model)."""
        for s in self.strategies:
            s.setup(self)

    def _setup_step(self) -> None:
        """After Ultralytics' setup: the shared parameters, the loss items' names, the AMP scaler."""
        model = unwrap_model(self.model)
        self.shared = [p for n, p in model.named_parameters() if module_of(n) in SHARED_MODULES]
        model.eval()  # no state changed (training sets train mode)
        with torch.no_grad():
            samples = {t: stage_samples(part, 1)[0] for t, part in self.parts.items()}
            items = {t: model.loss(sample, terms=self.strategies)[1] for t, sample in samples.items()}
        self.loss_names = tuple(f"{t}/{name}" for t, names in items.items() for name in names)
        if RANK in {-1, 0}:  # DDP: rank 0 holds the metrics
            self.metrics.update(dict.fromkeys(self.label_loss_items(prefix="val"), 0.0))
        if self.balancer.kind == "gradient" and self.scaler.is_enabled():
            LOGGER.warning(f"balance={self.balancer.key}: the AMP gradient scaler is off (it would change the method)")
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    def step_loss(self, batches: dict[str, list[dict]], model: UnifiedModel) -> tuple[torch.Tensor, dict[str, float]]:
        """One joint step's loss and items, where the loop calls ``model(batch)``: each task's loss, then the
        balancer's combination in full precision. A gradient-level method fills the gradients itself, so the loop
        gets a leaf without a graph. The loop multiplies the loss by the world size; the joint step's gradients are
        averaged by `optimizer_step`, so it is handed over divided by it."""
        losses, items = task_losses(model, batches, self.tasks, self.strategies)
        with torch.autocast(self.device.type, enabled=False):
            stats = step_gradient_stats(self.epoch_means, losses, self.shared, self.balancer)
            total, weights = self.balancer.combine(losses, self.shared)
            stats = combined_gradient_stats(self.balancer, stats)
        self.epoch_means.add(step_values(losses, items, weights, stats))
        if total is None:
            total = sum(losses.values()).detach().requires_grad_()
        step_items = {f"{t}/{name}": value for t, values in items.items() for name, value in values.items()}
        scale = self.world_size if RANK != -1 else 1
        return total / scale, {**item_means(self.epoch_means, self.loss_names), **step_items}

    def optimizer_step(self) -> None:
        """The unified trainers' step, every gradient first averaged over the ranks (as DDP's backward would)."""
        if self.world_size > 1:
            params = [*unwrap_model(self.model).parameters(), *self.balancer.parameters()]
            average_gradients(p for p in params if p.requires_grad)
        super().optimizer_step()

    def _start_epoch(self) -> None:
        """Epoch start (a callback): new epoch means; the loaders at the epoch (a resumed run draws as if unbroken)."""
        self.epoch_means = EpochMeans()
        self.train_loader.set_epoch(self.epoch)

    def _end_epoch(self) -> None:
        """Epoch end (the first callback): the epoch's loss items, the balancer's epoch end, the diagnostics row."""
        self.tloss = item_means(self.epoch_means, self.loss_names)
        means = task_loss_means(self.epoch_means, self.tasks)
        (averaged,) = mean_over_ranks([torch.tensor(list(means.values()))])
        self.balancer.epoch_end(dict(zip(means, averaged.tolist(), strict=True)))
        if RANK in {-1, 0}:
            write_diagnostics(self.save_dir / DIAGNOSTICS, self.epoch + 1, self.epoch_means, self.tasks)

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
        """Every task's unified validator (its part's: on its val loader, in its folder), one fitness."""
        validators = {t: part.get_validator() for t, part in self.parts.items()}
        return JointValidator(validators, {t: part.data for t, part in self.parts.items()}, self.args, self.baselines)

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

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        """Each stream's first batch of the step, plotted by its part into its folder."""
        for name, batches in batch["batches"].items():
            self.streams[name].plot_training_samples(copy(batches[0]), ni)

    def plot_training_labels(self) -> None:
        """Each task's label statistics, plotted by its part into its folder."""
        for part in self.parts.values():
            part.plot_training_labels()
