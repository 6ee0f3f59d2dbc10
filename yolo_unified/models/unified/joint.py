"""Joint training: one run trains every task of the data YAML, each optimizer step seeing batches of every task."""

from __future__ import annotations

import csv
import json
from copy import copy
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr, plt_settings
from ultralytics.utils.checks import check_imgsz
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.balancing import Balancer, build_balancer, gradient_stats
from yolo_unified.continual import StageContext, module_of, stage_samples
from yolo_unified.continual.protocol import STATE_FILE, save_atomically
from yolo_unified.data.config import ULTRALYTICS_TASK, check_heads, load_data_config, task_names
from yolo_unified.data.sampling import JointLoader, TaskSampler, check_sampling
from yolo_unified.engine import PRIMARY_METRIC
from yolo_unified.models.unified.train import (
    UnifiedClassificationTrainer,
    UnifiedDetectionTrainer,
    UnifiedSegmentationTrainer,
    UnifiedTrainerMixin,
    drop_rows_after,
)
from yolo_unified.nn.modules import TASKS
from yolo_unified.nn.tasks import JOINT_BATCHES, UnifiedModel, loss_scale

SHARED_MODULES = ("backbone", "neck", "tower")  # what every task uses (yolo_unified.continual.MODULE_PREFIXES)
DIAGNOSTICS = "diagnostics.csv"  # per-epoch balancing diagnostics in the run folder (plotted to diagnostics.png)
SEQUENTIAL_ONLY = ("ewc", "replay")  # strategies that store memory of one stage's task at its end


def task_metric(key: str, task: str) -> str:
    """An Ultralytics metric or loss name with the task after its group: ``metrics/mIoU`` -> ``metrics/seg/mIoU``."""
    group, _, name = key.partition("/")
    return f"{group}/{task}/{name}"


class TaskPart:
    """One task of a joint run, as its own unified trainer sees it: its data, loaders, preprocessing, loss names,
    plots and validator.

    A part is an instance of the task's trainer class (its methods, ``super()`` included, run unchanged), set up
    without ``BaseTrainer.__init__`` (no run folder, args.yaml or callbacks of its own). It holds its own ``args``
    (the joint run's, with the task's Ultralytics task and its ``task_args``), ``data``, ``save_dir`` (the run's
    ``<task>/`` folder), loaders and loss names; every other attribute (model, EMA, device, epoch, stopper, ...) is
    the joint trainer's.
    """

    def __init__(self, joint: JointTrainer, args: SimpleNamespace) -> None:
        """Read this task's section of the data YAML (a clear error for a missing section or split)."""
        self.joint, self.args = joint, args
        self.save_dir = joint.save_dir / self.task_key
        self.data = self.get_dataset()
        self.loss_names: tuple[str, ...] = ()
        self.loss_items: dict[str, torch.Tensor] | None = None

    def __getattr__(self, name: str) -> Any:
        """What the part does not hold itself is the joint trainer's."""
        if name.startswith("__") or "joint" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.joint, name)


class SegmentationPart(TaskPart, UnifiedSegmentationTrainer):
    """The segmentation task of a joint run."""


class DetectionPart(TaskPart, UnifiedDetectionTrainer):
    """The detection task of a joint run."""


class ClassificationPart(TaskPart, UnifiedClassificationTrainer):
    """The classification task of a joint run."""


PARTS: dict[str, type[TaskPart]] = {"seg": SegmentationPart, "det": DetectionPart, "cls": ClassificationPart}


def joint_tasks(wanted: str | list[str] | None, data_config: dict[str, Any], data: str) -> list[str]:
    """The tasks a joint run trains, in the model's order: ``tasks`` (a list, or ``seg,det`` on the command line), by
    default every task of the data YAML; a task the data does not have is an error naming it."""
    have = [t for t in TASKS if t in data_config["tasks"]]
    if not wanted:
        return have
    if isinstance(wanted, str):
        wanted = [t.strip() for t in wanted.strip("[]").split(",") if t.strip()]
    if bad := [t for t in wanted if t not in have]:
        raise ValueError(f"tasks={wanted}: {data} has no {', '.join(map(str, bad))} data (it has {', '.join(have)})")
    return [t for t in TASKS if t in wanted]


def multitask_fitness(scores: dict[str, float], baselines: dict[str, float] | None = None) -> float:
    """Mean over tasks of the primary metric, each divided by its single-task score when `baselines` are given."""
    return float(np.mean([s / baselines[t] if baselines else s for t, s in scores.items()]))


def baseline_scores(baselines: str | Path, tasks: list[str]) -> dict[str, float]:
    """Each task's single-task score from a baselines run (the ``protocol.json`` of a ``chain: False`` protocol)."""
    file = Path(baselines) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"baselines={baselines}: no {STATE_FILE} there (give the folder of a baselines run)")
    state = json.loads(file.read_text())
    if state.get("config", {}).get("chain", True):
        raise ValueError(f"baselines={baselines} is a chained protocol, not single-task baselines (chain: False)")
    scores = {s["task"]: float(s["own_score"]) for s in state["stages"]}
    if bad := [t for t in tasks if not scores.get(t)]:
        raise ValueError(f"baselines={baselines}: no non-zero single-task score for {', '.join(bad)} in {file}")
    return {t: scores[t] for t in tasks}


class JointValidator:
    """Every task's unified validator, one after the other: metrics and losses named per task, one fitness.

    The fitness is `multitask_fitness` of the primary metrics (``engine.PRIMARY_METRIC``), relative to the
    single-task scores when `baselines` holds them. ``metrics.keys`` and ``args`` are what Ultralytics'
    trainer reads from a validator; ``args.plots`` is handed to every task's validator for a standalone run.
    """

    def __init__(self, parts: dict[str, TaskPart], args: SimpleNamespace, baselines: dict[str, float] | None):
        """One validator per part, on its own val loader and in its own folder."""
        self.validators = {task: part.get_validator() for task, part in parts.items()}
        self.args, self.baselines = args, baselines
        keys = [task_metric(k, t) for t, v in self.validators.items() for k in v.metrics.keys]
        self.metrics = SimpleNamespace(keys=keys)

    def __call__(self, trainer: JointTrainer | None = None, model: str | Path | None = None) -> dict[str, float]:
        """Validate the training EMA (`trainer`) or a checkpoint (`model`) on every task; fitness under ``fitness``."""
        results, scores = {}, {}
        for task, validator in self.validators.items():
            if trainer is None:
                validator.args.plots = self.args.plots
                stats = validator(model=model)
            else:
                stats = validator(trainer=trainer.parts[task])
            stats.pop("fitness", None)
            scores[task] = stats[PRIMARY_METRIC[task]]
            results.update({task_metric(k, task): v for k, v in stats.items()})
        return {**results, "fitness": multitask_fitness(scores, self.baselines)}


class EpochMeans:
    """Means of named values over an epoch's steps, each over the steps that measured it (NaN is not a measure)."""

    def __init__(self) -> None:
        """Nothing measured yet."""
        self.steps = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        """Add one step's values."""
        for key, value in values.items():
            if np.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, key: str, default: float = float("nan")) -> float:
        """The mean of `key`, or `default` if no step measured it."""
        return self.sums[key] / self.counts[key] if key in self.counts else default


def task_losses(
    model: UnifiedModel, batches: dict[str, list[dict]], tasks: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Each task's loss on its own batches only, and the task's loss items (mean over its batches).

    A task's loss is its Ultralytics loss (with the strategies' terms) on the scale of one image, summed over its
    batches of the step: Ultralytics sums detection and segmentation losses over a batch's images and averages
    classification's, so every task enters the balancing on the same footing. Each batch is its own forward pass
    (its own BatchNorm statistics), so an image adds nothing to another task's loss. A task without a batch in the
    step gets a zero loss without a graph and no items.
    """
    device = next(model.parameters()).device
    losses, items = {}, {}
    for task in tasks:
        losses[task] = torch.zeros((), device=device)
        sums: dict[str, float] = {}
        for batch in batches.get(task, ()):
            loss, parts = model.loss(batch)
            losses[task] = losses[task] + loss.sum() / loss_scale(batch)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        if sums:
            items[task] = {name: value / len(batches[task]) for name, value in sums.items()}
    return losses, items


class JointTrainer(UnifiedTrainerMixin, BaseTrainer):
    """Train every task of the multi-task data YAML in one run (``joint=True``; cfg/joint.yaml).

    Each task keeps its own Ultralytics dataset, loader, augmentation, preprocessing, loss and validator, held by
    one `TaskPart` per task. Each optimizer step holds batches of the tasks (``task_sampling``; an epoch is as many
    steps as the largest training set has batches); every task's loss comes from its own images only; the
    ``balance`` method (yolo_unified.balancing, settings in ``balance_args``) combines the losses (loss-level
    methods) or the task gradients on the shared backbone, neck and tower (gradient-level methods). Progress bar,
    EMA, checkpoints (the same unified model), results.csv, resume and the strategies are the unified trainers';
    results.csv names every task's losses and metrics (``train/det/box_loss``, ``metrics/seg/mIoU``), best.pt is
    chosen by the multi-task fitness of `JointValidator`, and ``diagnostics.csv``/``.png`` record each epoch's task
    losses, balancer weights, task gradient norms and cosines.

    The step: Ultralytics' loop calls the model on each batch and then ``backward()`` on the loss it returns. A
    joint batch reaches `step` through the model (``UnifiedModel.loss``), which computes, balances and
    backpropagates the task losses itself (gradient-level methods need one backward per task) and returns the total
    as a detached leaf: the loop's ``backward()`` on it touches no parameter, and its optimizer step, gradient
    accumulation, EMA update and NaN checks run as for any trainer.
    """

    task_key = "joint"
    gradient_stats_steps = 2  # steps per epoch (the first ones) on which gradient_stats measures the task gradients

    def __init__(
        self,
        cfg=DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict | None = None,
        context: StageContext | None = None,
    ):
        """Read every task's data, check the sampling, build the balancer; the rest is the unified trainers'."""
        super().__init__(cfg, overrides, _callbacks, context)
        if self.world_size > 1:
            raise ValueError(f"device={self.args.device}: joint training runs on one device (its step is not DDP's)")
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
        self.item_names: list[str] = []
        self.add_callback("on_pretrain_routine_end", JointTrainer._setup_step)
        self.add_callback("on_train_epoch_start", JointTrainer._start_epoch)
        self.add_callback("on_train_epoch_end", JointTrainer._end_epoch)
        LOGGER.info(
            f"{colorstr('joint:')} {', '.join(self.tasks)}; task_sampling={self.args.task_sampling}, "
            f"balance={self.balancer.key} ({self.balancer.kind}-level)"
        )

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
        task_args = self.args.task_args or {}
        if not isinstance(task_args, dict) or not set(task_args) <= set(self.tasks):
            raise ValueError(f"task_args={task_args!r}: give a dict of train keys per task of the data {self.tasks}")
        self.parts = {t: PARTS[t](self, self.part_args(t, task_args.get(t) or {})) for t in self.tasks}
        return {"channels": 3, **dict.fromkeys(("train", self.args.split), self.args.data)}

    def part_args(self, task: str, own: dict[str, Any]) -> SimpleNamespace:
        """The joint run's arguments with the task's Ultralytics task and its ``task_args`` keys."""
        if unknown := sorted(set(own) - set(DEFAULT_CFG_DICT)):
            raise ValueError(f"task_args: unknown key(s) {unknown} for {task}; valid keys are the train keys")
        return get_cfg(dict(vars(self.args)), {**own, "task": ULTRALYTICS_TASK[task]})

    def task_shares(self) -> dict[str, float]:
        """Each trained task's share of the steps (``task_share``; a task left out: 1; check_sampling checks the
        values); the share of a task the run does not train (``tasks=seg,det`` with cfg/joint.yaml) is ignored."""
        given = self.args.task_share or {}
        if not isinstance(given, dict) or not set(given) <= set(TASKS):
            raise ValueError(f"task_share={given!r}: give a dict of step fractions per task, tasks are {list(TASKS)}")
        return {t: given.get(t, 1.0) for t in self.tasks}

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """The unified model; a unified checkpoint given as ``model=`` must have heads for the data's class counts."""
        if isinstance(weights, UnifiedModel) and str(self.args.model).endswith(".pt"):
            data = {t: names for t, names in task_names(self.data_config).items() if t in self.tasks}
            check_heads(weights.task_names, data, self.args.model, self.args.data)
        return super().get_model(cfg, weights, verbose)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """The unified trainers' optimizer, plus a group for the balancer's learnable weights (no weight decay)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if params := list(self.balancer.parameters()):
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0, "param_group": "balancer"})
        return optimizer

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """Every task's own loader for `mode` (its trainer's, on its own split and batch size), as one JointLoader.

        `batch_size` is what Ultralytics chose for the run's ``batch``; a task with its own ``batch`` in
        ``task_args`` gets it scaled alike.
        """
        split = "train" if mode == "train" else self.args.split
        loaders = {}
        for task, part in self.parts.items():
            part.args.imgsz = check_imgsz(part.args.imgsz, stride=self.stride, floor=self.stride, max_dim=1)
            part_batch = max(batch_size * part.args.batch // self.args.batch, 1)
            loaders[task] = part.get_dataloader(part.data[split], part_batch, rank, mode)
            setattr(part, "train_loader" if mode == "train" else "test_loader", loaders[task])
        sizes = {task: len(loader.dataset) for task, loader in loaders.items()}
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
        """Each task's batches through that task's own preprocessing, under ``JOINT_BATCHES``.

        ``img`` (the first batch's images) is what the progress bar reads the batch size and image size from.
        """
        batches = {task: [self.parts[task].preprocess_batch(b) for b in bs] for task, bs in batch.items()}
        return {"img": next(iter(batches.values()))[0]["img"], JOINT_BATCHES: batches}

    def _setup_step(self) -> None:
        """Once the model, optimizer and EMA exist: the shared parameters, each task's loss names, the model's step."""
        model = unwrap_model(self.model)
        self.shared = [p for n, p in model.named_parameters() if module_of(n) in SHARED_MODULES]
        model.eval()  # loss names from one validation image of each task, no state changed (training sets train mode)
        with torch.no_grad():
            for part in self.parts.values():
                part.loss_names = tuple(model.loss(stage_samples(part, 1)[0])[1])
                part.loss_items = {name: torch.zeros((), device=self.device) for name in part.loss_names}
        self.item_names = [f"{t}/{n}" for t, part in self.parts.items() for n in part.loss_names]
        model.joint_step = self.step  # the training model only: the EMA copy already exists and is never re-made
        if self.balancer.kind == "gradient" and self.scaler.is_enabled():
            LOGGER.warning(f"balance={self.balancer.key}: the AMP gradient scaler is off (it would change the method)")
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    def step(self, batches: dict[str, list[dict]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's forward and backward: every task's loss on its own batches, balanced and backpropagated.

        Returns the total as a detached leaf (the gradients are in ``.grad`` already) and the loss items for the
        loop's running means. Gradient statistics are measured on the epoch's first ``gradient_stats_steps`` steps.
        """
        losses, items = task_losses(unwrap_model(self.model), batches, self.tasks)
        stats = {}
        with torch.autocast(self.device.type, enabled=False):  # backward passes outside the forward's autocast
            if self.epoch_means.steps < self.gradient_stats_steps:
                stats = gradient_stats(losses, self.shared)
            total, weights = self.balancer.combine(losses, self.shared)
            if total is not None:
                self.scaler.scale(total).backward()
        self.epoch_means.steps += 1
        self.epoch_means.add(
            {
                **{f"loss/{t}": losses[t].item() for t in items},
                **{f"weight/{t}": w for t, w in weights.items()},
                **{f"item/{t}/{n}": v for t, parts in items.items() for n, v in parts.items()},
                **stats,
            }
        )
        total = sum(losses.values()) if total is None else total
        return total.detach().requires_grad_(), self.loop_items()

    def loop_items(self) -> dict[str, torch.Tensor]:
        """Loss items whose running mean in Ultralytics' loop (``tloss``) is each item's mean over the epoch's steps
        that had its task (a task can miss steps with ``task_sampling`` other than round_robin; 0 until it first
        comes)."""
        means = {name: self.epoch_means.mean(f"item/{name}", 0.0) for name in self.item_names}
        i = self.epoch_means.steps - 1  # the loop's batch index: it sets tloss = (tloss * i + item) / (i + 1)
        if self.tloss is not None:
            means = {name: (i + 1) * m - i * float(self.tloss[name]) for name, m in means.items()}
        return {name: torch.tensor(v) for name, v in means.items()}

    def _start_epoch(self) -> None:
        """Start the epoch's means; place the task sampler at the epoch's first step (a resumed run goes on alike)."""
        self.epoch_means = EpochMeans()
        self.train_loader.task_sampler.step = self.epoch * len(self.train_loader)

    def _end_epoch(self) -> None:
        """Give the balancer the epoch's task losses; write and plot the epoch's diagnostics."""
        means = self.epoch_means
        self.balancer.epoch_end({t: means.mean(f"loss/{t}") for t in self.tasks})
        if RANK not in {-1, 0}:
            return
        keys = [f"{group}/{t}" for group in ("loss", "weight", "grad_norm") for t in self.tasks]
        keys += [f"cos/{a}-{b}" for a, b in combinations(self.tasks, 2)]
        file = self.save_dir / DIAGNOSTICS
        new = not file.is_file()
        with open(file, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([self.epoch + 1, *(f"{means.mean(k):.6g}" for k in keys)])
        plot_diagnostics(file)

    def save_model(self) -> bool:
        """The unified trainers' checkpoints; last.pt also holds the balancer's state (learnable weights, history)."""
        saved = super().save_model()
        if saved:
            ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
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
        """Close mosaic in every task's loader."""
        for part in self.parts.values():
            part._close_dataloader_mosaic()

    def progress_string(self) -> str:
        """Header of the progress bar: each task's loss items (``det/box``), the batch size and the image size."""
        names = [name.replace("_loss", "") for name in self.loss_names]
        return ("\n" + "%11s" * (4 + len(names))) % ("Epoch", "GPU_mem", *names, "Batch", "Size")

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        """Each task's first batch of the step, plotted by its own trainer into its folder."""
        for task, batches in batch[JOINT_BATCHES].items():
            self.parts[task].plot_training_samples(copy(batches[0]), ni)

    def plot_training_labels(self) -> None:
        """Each task's label statistics, plotted by its own trainer into its folder."""
        for part in self.parts.values():
            part.plot_training_labels()


@plt_settings()
def plot_diagnostics(file: Path) -> None:
    """Plot diagnostics.csv beside it: task losses, balancer weights, gradient norms and cosines per epoch."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with open(file) as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    panels = {
        "loss": "task loss (per image)",
        "weight": "balancer weight",
        "grad_norm": "gradient norm, shared parameters",
        "cos": "cosine of task gradients",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), tight_layout=True)
    epochs = [row["epoch"] for row in rows]
    for ax, (group, title) in zip(axes, panels.items(), strict=True):
        for key in (k for k in rows[0] if k.startswith(f"{group}/")):
            ax.plot(epochs, [row[key] for row in rows], marker="o", label=key.split("/", 1)[1])
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    axes[-1].axhline(0.0, color="grey", linewidth=0.5)
    fig.savefig(file.with_suffix(".png"), dpi=120)
    plt.close(fig)
