"""Every place yolo-unified changes what Ultralytics does: the methods it overrides and the names it patches, with why,
and the private methods it calls.

Public methods are Ultralytics' extension points. Private ones (a leading underscore) and patched module attributes
are not: their signatures as of the pinned Ultralytics are kept here, and `signature_changes` names the ones an
installed Ultralytics has changed (``import yolo_unified`` warns; tests/test_ultralytics_api.py fails). The same test
fails when one of the classes below gains an override this list does not name.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

PINNED_ULTRALYTICS = "8.4.190"  # the version pyproject.toml pins and these signatures come from


@dataclass(frozen=True)
class Override:
    """One Ultralytics method overridden (or module attribute patched) by yolo-unified."""

    target: str  # the Ultralytics class or module that defines it, e.g. "ultralytics.engine.trainer.BaseTrainer"
    name: str  # the method or attribute
    by: str  # where yolo-unified replaces it (its class; for a patch its function) or calls it (a private method)
    why: str
    signature: str = ""  # private methods and patched names: their parameters in the pinned Ultralytics

    @property
    def private(self) -> bool:
        """Not an Ultralytics extension point: private (a leading underscore) or a patched module attribute."""
        return self.name.startswith("_") or not self.target.rpartition(".")[2][:1].isupper()


TRAINER = "ultralytics.engine.trainer.BaseTrainer"
VALIDATOR = "ultralytics.engine.validator.BaseValidator"
PREDICTOR = "ultralytics.engine.predictor.BasePredictor"
MIXIN = "UnifiedTrainerMixin"
JOINT = "JointTrainer"
OVERRIDES: tuple[Override, ...] = (
    # the task trainers (models/unified/train.py)
    Override(TRAINER, "_setup_ddp", MIXIN, "on the CPU the gloo group is joined in __init__", "self"),
    Override(TRAINER, "_setup_train", MIXIN, "CPU DDP wraps the model without device_ids", "self"),
    Override(TRAINER, "build_optimizer", MIXIN, "one parameter group per module group for the strategies' lr_mult"),
    Override(TRAINER, "optimizer_step", MIXIN, "the strategies' gradient hooks (clipping among them) before the step"),
    Override(TRAINER, "_model_train", MIXIN, "then the strategies' train mode (frozen BatchNorm)", "self"),
    Override(TRAINER, "validate", MIXIN, "an epoch a strategy vetoes (forget_stop) never becomes the best"),
    Override(
        TRAINER,
        "_handle_nan_recovery",
        MIXIN,
        "a NaN loss ends the stage, keeping the last good weights",
        "self, epoch",
    ),
    Override(TRAINER, "resume_training", MIXIN, "drop results.csv rows of epochs the checkpoint does not hold"),
    Override(TRAINER, "save_model", MIXIN, "atomic checkpoints (a kill mid-write never leaves a broken last.pt)"),
    Override(TRAINER, "check_resume", MIXIN, "an unreadable resume checkpoint says so, not 'not found'"),
    Override(TRAINER, "final_eval", MIXIN, "strip and validate best.pt atomically; mark the stage trained"),
    Override(TRAINER, "get_dataset", MIXIN, "the task's section of the multi-task data YAML"),
    Override(TRAINER, "setup_model", MIXIN, "the unified model from a YAML, a unified or a YOLOv8 checkpoint"),
    Override(TRAINER, "get_model", MIXIN, "the unified model with every task's classes and image size"),
    Override(TRAINER, "set_model_attributes", MIXIN, "class names stay per task on the model"),
    Override(TRAINER, "get_validator", MIXIN, "the task's unified validator"),
    Override(TRAINER, "preprocess_batch", MIXIN, "labels in the model's class ids, then the strategies' own labels"),
    Override(TRAINER, "build_dataset", MIXIN, "the training set with the images strategies add (replay's mix)"),
    # the joint trainer (models/unified/joint/train.py): its own loop, each task's pipeline through its TaskPart
    Override(TRAINER, "_do_train", JOINT, "the joint loop: every task's batches, losses, balancing, step", "self"),
    Override(TRAINER, "_setup_train", JOINT, "DDP: no wrapper, rank 0's weights; the step averages gradients", "self"),
    Override(TRAINER, "get_dataset", JOINT, "one TaskPart per task of the data YAML"),
    Override(TRAINER, "get_model", JOINT, "a unified checkpoint's heads must fit the data's class counts"),
    Override(TRAINER, "build_optimizer", JOINT, "a group for the balancer's learnable weights"),
    Override(TRAINER, "get_dataloader", JOINT, "every task's own loader (shared images: one), as one JointLoader"),
    Override(TRAINER, "preprocess_batch", JOINT, "each task's batches through its own preprocessing"),
    Override(TRAINER, "save_model", JOINT, "last.pt also holds the balancer's state"),
    Override(TRAINER, "resume_training", JOINT, "the balancer's state and diagnostics.csv rows"),
    Override(TRAINER, "get_validator", JOINT, "every task's validator, one fitness"),
    Override(TRAINER, "set_class_weights", JOINT, "class weights are per task: not applied jointly"),
    Override(TRAINER, "progress_string", JOINT, "each task's loss items in the progress bar"),
    Override(TRAINER, "plot_training_samples", JOINT, "each task's batch plotted by its own trainer"),
    Override(TRAINER, "plot_training_labels", JOINT, "each task's labels plotted by its own trainer"),
    Override(TRAINER, "_close_dataloader_mosaic", JOINT, "close mosaic in every training stream's loader", "self"),
    # private Ultralytics methods the joint loop calls as Ultralytics' own loop does
    Override(TRAINER, "_setup_train", f"{JOINT}._do_train", "model, loaders, optimizer, EMA as for any run", "self"),
    Override(TRAINER, "_get_warmup_iterations", f"{JOINT}._do_train", "the warmup length", "self, num_batches"),
    Override(TRAINER, "_setup_scheduler", f"{JOINT}._do_train", "the schedule after time= changes epochs", "self"),
    Override(TRAINER, "_clear_memory", f"{JOINT}._do_train", "free memory between epochs", "self, threshold=None"),
    Override(TRAINER, "_get_memory", f"{JOINT}._do_train", "memory in the progress bar", "self, fraction=False"),
    # the validators (models/unified/val.py)
    Override(VALIDATOR, "__call__", "UnifiedValidatorMixin", "a standalone run resolves the multi-task data YAML"),
    Override(VALIDATOR, "init_metrics", "UnifiedValidatorMixin", "the metrics with the task's class names"),
    Override(VALIDATOR, "postprocess", "UnifiedValidatorMixin", "the task's output of the model's (det, seg, cls)"),
    Override(VALIDATOR, "get_dataloader", "UnifiedValidatorMixin", "the loader with the task's class names"),
    Override(VALIDATOR, "preprocess", "UnifiedValidatorMixin", "labels in the model's class ids (matched by name)"),
    Override(
        "ultralytics.models.yolo.classify.val.ClassificationValidator",
        "update_metrics",
        "UnifiedClassificationValidator",
        "images of classes the model lacks stay out of the metrics",
    ),
    Override(
        "ultralytics.models.yolo.classify.val.ClassificationValidator",
        "init_metrics",
        "UnifiedClassificationValidator",
        "a standalone run's classes named by the data YAML, not by folder",
    ),
    # the predictor (models/unified/predict.py)
    Override(PREDICTOR, "setup_model", "UnifiedPredictor", "class names per task from the model or its metadata"),
    Override(PREDICTOR, "setup_source", "UnifiedPredictor", "an empty or non-image file fails with its name"),
    Override(PREDICTOR, "preprocess", "UnifiedPredictor", "the letterbox val and every export use"),
    Override(PREDICTOR, "pre_transform", "UnifiedPredictor", "the letterbox val and every export use"),
    Override(PREDICTOR, "postprocess", "UnifiedPredictor", "NMS on det, class map of seg, probabilities of cls"),
    Override(PREDICTOR, "construct_results", "UnifiedPredictor", "UnifiedResults: boxes, semantic mask and probs"),
    Override(PREDICTOR, "construct_result", "UnifiedPredictor", "UnifiedResults: boxes, semantic mask and probs"),
    # the exporter (export.py) and the names it patches
    Override("ultralytics.engine.exporter.Exporter", "__call__", "UnifiedExporter", "checks the heads against data="),
    Override(
        "ultralytics.engine.exporter.Exporter",
        "get_int8_calibration_dataloader",
        "UnifiedExporter",
        "INT8 calibration on the images of every task, letterboxed",
    ),
    Override("ultralytics.engine.exporter.Exporter", "export_onnx", "UnifiedExporter", "the three outputs named"),
    Override("ultralytics.engine.exporter.Exporter", "export_openvino", "UnifiedExporter", "outputs named"),
    Override(
        "ultralytics.utils.export.engine",
        "torch2onnx",
        "UnifiedExporter.export_onnx",
        "patched during export_onnx: the outputs named det, seg, cls and their dynamic axes",
        "model, im, output_file, opset=14, input_names=None, output_names=None, dynamic=None",
    ),
    Override(
        "ultralytics.utils.export.openvino",
        "torch2openvino",
        "UnifiedExporter.export_openvino",
        "patched during export_openvino: the outputs named det, seg, cls",
        "model, im, output_dir=None, dynamic=False, quantize=None, calibration_dataset=None, int8_detect=False, "
        "prefix=''",
    ),
    # the Model class (models/unified/model.py)
    Override("ultralytics.engine.model.Model", "task_map", "UnifiedYOLO", "the unified task's model and predictor"),
    Override(
        "ultralytics.engine.model.Model",
        "_new",
        "UnifiedYOLO",
        "a packaged model YAML by name",
        "self, cfg, task=None, verbose=False",
    ),
    Override(
        "ultralytics.engine.model.Model",
        "_load",
        "UnifiedYOLO",
        "predict at the deployment image size",
        "self, weights, task=None",
    ),
    Override("ultralytics.engine.model.Model", "train", "UnifiedYOLO", "the workflows: one task, joint, protocol"),
    Override("ultralytics.engine.model.Model", "val", "UnifiedYOLO", "every task of a multi-task data YAML"),
    Override("ultralytics.engine.model.Model", "export", "UnifiedYOLO", "UnifiedExporter, seg_argmax"),
    Override("ultralytics.engine.model.Model", "benchmark", "UnifiedYOLO", "the unified model against separate ones"),
    # the network (nn/tasks.py)
    Override("ultralytics.nn.tasks.BaseModel", "load", "UnifiedModel", "matching tensors of any YOLOv8 checkpoint"),
    Override("ultralytics.nn.tasks.BaseModel", "loss", "UnifiedModel", "the batch's task loss plus strategies' terms"),
    Override("ultralytics.nn.tasks.BaseModel", "init_criterion", "UnifiedModel", "one Ultralytics loss per task"),
    # settings (yolo_unified/__init__.py)
    Override(
        "ultralytics.utils.torch_utils",
        "NUM_THREADS",
        "yolo_unified/__init__.py",
        "training uses every core (Ultralytics leaves one idle; 1.7x faster on 2 cores)",
    ),
)


def resolve(target: str, name: str) -> Any:
    """The object ``target.name`` (a class or module path, then an attribute) in the installed Ultralytics."""
    module, _, cls = target.rpartition(".")
    owner = getattr(importlib.import_module(module), cls) if cls[:1].isupper() else importlib.import_module(target)
    return inspect.getattr_static(owner, name)


def parameters(function: Any) -> str:
    """A function's parameters as ``a, b=1``: names and defaults, without annotations."""
    function = function.__func__ if isinstance(function, (staticmethod, classmethod)) else function
    return ", ".join(
        p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
        for p in inspect.signature(function).parameters.values()
    )


def signature_changes() -> list[str]:
    """One line per private method or patched name that the installed Ultralytics lacks or whose parameters differ
    from the pinned ones."""
    changes = []
    for o in (o for o in OVERRIDES if o.private):
        try:
            found = resolve(o.target, o.name)
        except (AttributeError, ImportError):
            changes.append(f"{o.target}.{o.name} is gone (yolo-unified's {o.by} replaces it: {o.why})")
            continue
        if o.signature and (now := parameters(found)) != o.signature:
            changes.append(f"{o.target}.{o.name}({now}) was ({o.signature}) in Ultralytics {PINNED_ULTRALYTICS}")
    return changes
