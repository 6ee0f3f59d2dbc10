"""Trainers: Ultralytics' detection, semantic-segmentation and classification trainers, driving the unified model."""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.semantic import SemanticSegmentationTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, WORLD_SIZE, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified.common import learned_tasks, module_of
from yolo_unified.continual import StageContext, build_strategies, check_strategy_settings
from yolo_unified.data.classes import class_map, grown_names, remap_labels
from yolo_unified.data.config import load_data_config, task_data, task_names
from yolo_unified.ddp import CpuDDP, cpu_workers, from_rank_zero, init_cpu_group, rank_zero_alone
from yolo_unified.defaults import unified_cfg, unified_threads
from yolo_unified.files import load_checkpoint
from yolo_unified.models.unified import val
from yolo_unified.models.unified.checkpoints import CheckpointMixin
from yolo_unified.nn.tasks import DEFAULT_MODEL_YAML, UnifiedModel, check_class_lists


class UnifiedTrainerMixin(CheckpointMixin):
    """What the three task trainers share: the multi-task data YAML, the unified model, the strategies; paired with
    each task's Ultralytics trainer, whose datasets, losses, checkpoints and plots they keep."""

    task_key: str = ""  # "seg", "det" or "cls"
    validator_class: type = object
    class_lut: torch.Tensor | None = None  # data class id -> model class id, where the data numbers them otherwise

    def __init__(
        self,
        cfg=DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict | None = None,
        context: StageContext | None = None,
    ):
        """Default the model to the packaged unified YAML, build the stage's strategies from `context` (what a protocol
        tells the stage; a stand-alone run is a first stage); the rest is Ultralytics'."""
        overrides = dict(overrides or {})
        if not overrides.get("model"):
            overrides["model"] = DEFAULT_MODEL_YAML
        check_strategy_settings(overrides)  # before Ultralytics makes the run folder
        super().__init__(unified_cfg(cfg), overrides, _callbacks)  # Ultralytics' keys and the package's
        if cpu_workers(self.args.device):  # one of several torchrun processes: a rank of CPU DDP (yolo_unified.ddp)
            init_cpu_group()
            self.world_size = WORLD_SIZE
            LOGGER.info(
                f"{colorstr('DDP:')} rank {RANK} of {WORLD_SIZE} on the CPU (gloo), batch {self.args.batch} split"
            )
        self.context = context or StageContext(index=0, task=self.task_key, data=str(self.args.data))
        self.strategies = build_strategies(self.args, self.context)
        self.nan_stopped = False
        self.add_callback("on_pretrain_routine_end", type(self)._setup_strategies)
        self.add_callback("on_train_end", UnifiedTrainerMixin._end_strategies)

    def train(self):
        """Ultralytics' training, on the package's CPU threads (`unified_threads`), Ultralytics' restored after."""
        with unified_threads():
            return super().train()

    def _setup_ddp(self) -> None:
        """Ultralytics' DDP setup for GPUs; on the CPU the gloo group is joined already (in ``__init__``)."""
        if not cpu_workers(self.args.device):
            super()._setup_ddp()

    def _setup_train(self) -> None:
        """Ultralytics' setup; CPU DDP wraps the model without ``device_ids`` (`yolo_unified.ddp.CpuDDP`)."""
        if not cpu_workers(self.args.device):
            return super()._setup_train()
        with patch.object(torch.nn.parallel, "DistributedDataParallel", CpuDDP):
            return super()._setup_train()

    def _setup_strategies(self) -> None:
        """Set the strategies up and give their loss terms to the model being trained (not to its EMA copy)."""
        for s in self.strategies:
            s.setup(self)
        unwrap_model(self.model).loss_terms = self.strategies

    def _end_strategies(self) -> None:
        """Let the strategies store what later stages need, from the stage's best weights (DDP: on rank 0)."""
        weights = self.best if self.best.exists() else self.last
        if not self.strategies or not weights.exists():
            return
        best = load_checkpoint(weights)[0].float().to(self.device)
        best.args = self.args
        with rank_zero_alone():
            for s in self.strategies:
                s.stage_end(self, best)

    def finish_stage(self) -> None:
        """Finish a stage whose training ended before its protocol recorded it: the strategies' end-of-stage work."""
        self.model = load_checkpoint(self.best if self.best.exists() else self.last)[0].float().to(self.device)
        self._end_strategies()

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer, split into one parameter group per module group when strategies set multipliers.

        A multiplier of 0 leaves the module's parameters out of the optimizer and stops their gradients.
        """
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        mult = {k: v for s in self.strategies for k, v in s.lr_multipliers().items()}
        if not mult:
            return optimizer
        names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            split: dict[str, list] = {}
            for p in group["params"]:
                split.setdefault(module_of(names[id(p)]), []).append(p)
            for module, params in split.items():
                m = mult.get(module, 1.0)
                if m == 0:
                    for p in params:
                        p.requires_grad_(False)
                    continue
                groups.append({**group, "params": params, "lr": group["lr"] * m, "module": module})
        LOGGER.info(f"{colorstr('lr_mult:')} " + ", ".join(f"{k} x{v:g}" for k, v in mult.items()))
        if (
            self.args.warmup_bias_lr
        ):  # Ultralytics ramps its first group (a bias split) from it, whatever its multiplier
            LOGGER.info(f"lr_mult: warmup_bias_lr {self.args.warmup_bias_lr:g} -> 0 (it would ignore the multipliers)")
            self.args.warmup_bias_lr = 0.0
        optimizer.param_groups.clear()  # the optimizer is new (no state yet): refill it with the split groups
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def optimizer_step(self):
        """Ultralytics' step, with the strategies' gradient hooks (clipping among them) in place of its fixed clip."""
        self.scaler.unscale_(self.optimizer)
        for s in self.strategies:
            s.before_optimizer_step(self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)

    def _model_train(self):
        """Train mode as Ultralytics sets it every epoch, then the strategies' adjustments (frozen BatchNorm)."""
        super()._model_train()
        for s in self.strategies:
            s.after_model_train(self)

    def validate(self):
        """Validate; an epoch a strategy vetoes (forgetting too much) never becomes the stage's best."""
        best_before = self.best_fitness
        metrics, fitness = super().validate()  # DDP: every rank validates its share, rank 0 gets the metrics
        with rank_zero_alone():  # DDP: the strategies' checks run on rank 0, which tells the others
            vetoed = metrics is not None and not all([s.accept_epoch(self) for s in self.strategies])
            stop = metrics is not None and any(s.stop_stage() for s in self.strategies)
        if from_rank_zero(vetoed):
            self.best_fitness = best_before
            fitness = float("-inf")
        self.stop = self.stop or from_rank_zero(stop)
        return metrics, fitness

    def get_dataset(self) -> dict[str, Any]:
        """Read the multi-task data YAML and return this task's section as an Ultralytics dataset dict."""
        try:
            self.data_config = load_data_config(self.args.data)
            return task_data(self.data_config, self.task_key, splits=("train", self.args.split))
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise RuntimeError(f"Dataset '{self.args.data}' error: {e}") from e

    def setup_model(self) -> dict | None:
        """Build the unified model from a YAML or checkpoint; a YOLOv8 ``model=*.pt`` gives the default model with its
        matching tensors. ``pretrained=`` applies to a model built from its YAML only, and only warns when it cannot
        load."""
        if isinstance(self.model, torch.nn.Module):
            return None
        cfg, weights, ckpt = self.model, None, None
        if str(self.model).endswith(".pt"):
            weights, ckpt = load_checkpoint(self.model)
            check_class_lists(weights, self.model)
            cfg = weights.yaml if isinstance(weights, UnifiedModel) else DEFAULT_MODEL_YAML
        if weights is None and isinstance(self.args.pretrained, (str, Path)) and not self.resume:
            try:
                weights = load_checkpoint(self.args.pretrained)[0]
            except Exception as e:
                LOGGER.warning(f"pretrained='{self.args.pretrained}' could not be loaded ({e}); training from scratch.")
        self.model = self.get_model(cfg=cfg, weights=weights, verbose=RANK in {-1, 0})
        return ckpt

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """A unified model with the class lists of `weights` and the data (`model_names`: grown tasks keep their old
        outputs), each task's image size (``task_imgsz``, which val, predict and export read) and ``bn_momentum``."""
        names, added = self.model_names(weights)
        model = UnifiedModel(cfg or DEFAULT_MODEL_YAML, ch=self.data["channels"], task_names=names, verbose=verbose)
        if weights:
            model.load(weights)
            if added and not self.resume:
                model.model[-1].copy_class_rows(weights.model[-1])
        model.added_classes = added
        self.use_class_list(model, learned_tasks(weights) if not self.resume else set(model.task_names))
        if self.args.bn_momentum:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = float(self.args.bn_momentum)
        model.task_imgsz = {**(getattr(weights, "task_imgsz", None) or {}), **self.trained_imgsz()}
        return model

    def model_names(self, weights: torch.nn.Module | None) -> tuple[dict[str, dict[int, str]], dict[str, dict]]:
        """Each task's class names for this run's model, and ``{task: {"old": classes before, "from": weights file}}``
        for the tasks `weights` learned that grow (the data's classes they lack appended, matched by name:
        `grown_names`)."""
        known = getattr(weights, "task_names", None) or {}
        if self.resume:  # the run's own last.pt: its classes are the run's
            return dict(known), dict(getattr(weights, "added_classes", None) or {})
        learned = learned_tasks(weights)
        names, added = dict(known), {}
        for task, data_names in task_names(self.data_config).items():
            if task not in learned:
                names[task] = data_names
            elif task in self.trained_imgsz():
                names[task] = grown_names(known[task], data_names, self.args.data, task)
                if len(names[task]) > len(known[task]):
                    added[task] = {"old": len(known[task]), "from": str(Path(self.args.model).resolve())}
        return names, added

    def use_class_list(self, model: UnifiedModel, learned: set[str]) -> None:
        """Renumber this run's labels to the model's class ids, tell the strategies which old classes the run keeps, log
        it; strategies keeping old classes of a task the model never `learned` are an error."""
        task, data_names = self.task_key, self.data["names"]
        keepers = [s.key for s in self.strategies if s.keeps_old_classes]
        if keepers and task not in learned:
            raise ValueError(
                f"{', '.join(keepers)} keep the old classes of a task the model has, but model={self.args.model} has "
                f"not learned {task}: training it is a new task, not new classes (drop {', '.join(keepers)})"
            )
        if keepers and task not in model.added_classes:
            LOGGER.warning(
                f"{', '.join(keepers)}: {self.args.data} has no {task} class the model lacks; they do nothing"
            )
        ids = class_map(model.task_names[task], data_names, self.args.data, task)
        self.class_lut = None if ids == list(range(len(ids))) else torch.tensor(ids)
        for t, grown in model.added_classes.items():
            old, new = grown["old"], list(model.task_names[t].values())[grown["old"] :]
            keeping = [s.key for s in self.strategies if s.keeps_old_classes_of(t)]
            self.context.old_classes[t] = old
            self.context.prev_weights = self.context.prev_weights or grown["from"]
            LOGGER.info(
                f"{colorstr('add classes:')} {t} had {old} classes; {self.args.data} adds {len(new)}: "
                f"{', '.join(new)} (ids {old}-{old + len(new) - 1}). The {t} outputs grow to {old + len(new)} classes, "
                f"the old ones unchanged; old classes kept by "
                f"{', '.join(keeping) if keeping else 'nothing (cfg=cfg/add-classes.yaml keeps them)'}"
            )
        if self.class_lut is not None:
            moved = {data_names[i]: m for i, m in enumerate(ids) if m != i}
            LOGGER.info(f"{colorstr('add classes:')} {task} labels renumbered to the model's ids: {moved}")

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """Ultralytics' dataset of the task; a training set with the images strategies add (replay's ``mix``)."""
        dataset = super().build_dataset(img_path, mode, batch)
        added = [image for s in self.strategies for image in s.added_images(self, dataset)] if mode == "train" else []
        if added:
            self.add_images(dataset, added)
        return dataset

    def add_images(self, dataset, added: list[tuple[str, int]]) -> None:
        """Join classification images labelled in the model's class ids to `dataset`: where the data numbers its
        classes otherwise (``class_lut``), they get data ids after the data's own, which the table maps back."""
        n_data, lut = len(self.data["names"]), self.class_lut
        dataset.samples += [
            [path, m if lut is None else n_data + m, Path(path).with_suffix(".npy"), None] for path, m in added
        ]
        if lut is not None:
            self.class_lut = torch.cat([lut, torch.arange(int(lut.max()) + 1)])
        if dataset.cache_ram:
            dataset.cache_images()

    def preprocess_batch(self, batch: dict) -> dict:
        """Ultralytics' preprocessing, the labels in the model's class ids, then the strategies' labels."""
        batch = super().preprocess_batch(batch)
        if self.class_lut is not None:
            batch = remap_labels(batch, self.task_key, self.class_lut)
        for s in self.strategies:
            batch = s.labels(batch)
        return batch

    def trained_imgsz(self) -> dict[str, int]:
        """The image size of each task this run trains: ``{task: imgsz}``."""
        imgsz = self.args.imgsz
        return {self.task_key: int(max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz)}

    def set_model_attributes(self):
        """Attach the training arguments (the losses read their gains); class names stay per task on the model."""
        self.model.args = self.args

    def get_validator(self):
        """Return this task's unified validator."""
        return self.validator_class(
            self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks
        )


class UnifiedSegmentationTrainer(UnifiedTrainerMixin, SemanticSegmentationTrainer):
    """Train the unified model on semantic segmentation (Ultralytics' ``semantic`` task: CE + Dice, mIoU)."""

    task_key = "seg"
    validator_class = val.UnifiedSegmentationValidator


class UnifiedDetectionTrainer(UnifiedTrainerMixin, DetectionTrainer):
    """Train the unified model on detection (Ultralytics' ``detect`` task: box/cls/DFL losses, mAP)."""

    task_key = "det"
    validator_class = val.UnifiedDetectionValidator


class UnifiedClassificationTrainer(UnifiedTrainerMixin, ClassificationTrainer):
    """Train the unified model on image classification (Ultralytics' ``classify`` task: cross-entropy, top-1/top-5)."""

    task_key = "cls"
    validator_class = val.UnifiedClassificationValidator


TRAINERS = {"seg": UnifiedSegmentationTrainer, "det": UnifiedDetectionTrainer, "cls": UnifiedClassificationTrainer}
