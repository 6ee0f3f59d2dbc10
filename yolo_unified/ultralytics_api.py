"""Every place yolo-unified depends on Ultralytics' internals, with why: the methods it overrides, the private ones it
calls, the names it patches, and the lines of Ultralytics' training loop joint training runs inside.

Private methods, patched names and loop lines are pinned here as of `PINNED_ULTRALYTICS`; `signature_changes` names
those an installed Ultralytics changed (``import yolo_unified`` warns; tests/test_ultralytics_api.py fails, and
fails too on an override, private call or patch this list misses, or an entry no longer true)."""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any

PINNED_ULTRALYTICS = "8.4.190"  # the version pyproject.toml pins and these signatures come from


@dataclass(frozen=True)
class Override:
    """One dependency on an Ultralytics internal: a method overridden, a private method called, or a name patched."""

    target: str  # the class or module that defines it, e.g. "ultralytics.engine.trainer.BaseTrainer"
    name: str  # the method or attribute
    by: str  # what replaces it (our class), calls it or patches it (our function)
    why: str
    signature: str = ""  # private methods and patched functions: their parameters in the pinned Ultralytics
    kind: str = "override"  # "override", "call" (a private method called) or "patch" (a name replaced for a while)

    @property
    def private(self) -> bool:
        """Not an Ultralytics extension point: a private method, or a patched name."""
        return (self.name.startswith("_") and not self.name.startswith("__")) or self.kind == "patch"


TRAINER = "ultralytics.engine.trainer.BaseTrainer"
VALIDATOR = "ultralytics.engine.validator.BaseValidator"
CLS_VALIDATOR = "ultralytics.models.yolo.classify.val.ClassificationValidator"
PREDICTOR = "ultralytics.engine.predictor.BasePredictor"
RESULTS = "ultralytics.engine.results.Results"
EXPORTER = "ultralytics.engine.exporter.Exporter"
MODEL = "ultralytics.engine.model.Model"
BASE_MODEL = "ultralytics.nn.tasks.BaseModel"
DETECT = "ultralytics.nn.modules.head.Detect"
DATASET = "ultralytics.data.dataset.YOLODataset"
MIXIN, CHECKPOINTS, JOINT = "UnifiedTrainerMixin", "CheckpointMixin", "JointTrainer"
# fmt: off
OVERRIDES: tuple[Override, ...] = (
    # the task trainers (models/unified/train.py, their checkpoints in checkpoints.py)
    Override(TRAINER, "__init__", MIXIN, "the package's keys beside Ultralytics'; the strategies; CPU DDP's group"),
    Override(TRAINER, "train", MIXIN, "on the package's CPU threads, Ultralytics' restored after"),
    Override(TRAINER, "_setup_ddp", MIXIN, "on the CPU the gloo group is joined in __init__", "self"),
    Override(TRAINER, "_setup_train", MIXIN, "CPU DDP wraps the model without device_ids", "self"),
    Override(TRAINER, "build_optimizer", MIXIN, "one parameter group per module group for the strategies' lr_mult"),
    Override(TRAINER, "optimizer_step", MIXIN, "the strategies' gradient hooks (clipping among them) before the step"),
    Override(TRAINER, "_model_train", MIXIN, "then the strategies' train mode (frozen BatchNorm)", "self"),
    Override(TRAINER, "validate", MIXIN, "an epoch a strategy vetoes (forget_stop) never becomes the best"),
    Override(TRAINER, "_handle_nan_recovery", CHECKPOINTS, "a NaN loss ends the stage, keeping the last good weights",
             "self, epoch"),
    Override(TRAINER, "resume_training", CHECKPOINTS, "drop results.csv rows of epochs the checkpoint does not hold"),
    Override(TRAINER, "save_model", CHECKPOINTS, "atomic checkpoints (a kill mid-write never leaves a broken last.pt)"),
    Override(TRAINER, "check_resume", CHECKPOINTS, "an unreadable resume checkpoint says so, not 'not found'"),
    Override(TRAINER, "final_eval", CHECKPOINTS, "strip and validate best.pt atomically; mark the stage trained"),
    Override(TRAINER, "get_dataset", MIXIN, "the task's section of the multi-task data YAML"),
    Override(TRAINER, "setup_model", MIXIN, "the unified model from a YAML, a unified or a YOLOv8 checkpoint"),
    Override(TRAINER, "get_model", MIXIN, "the unified model with every task's classes and image size"),
    Override(TRAINER, "set_model_attributes", MIXIN, "class names stay per task on the model"),
    Override(TRAINER, "get_validator", MIXIN, "the task's unified validator"),
    Override(TRAINER, "preprocess_batch", MIXIN, "labels in the model's class ids, then the strategies' own labels"),
    Override(TRAINER, "build_dataset", MIXIN, "the training set with the images strategies add (replay's mix)"),
    # the joint trainer (models/unified/joint/): the hooks Ultralytics' _do_train calls, each task's work by its part
    Override(TRAINER, "__init__", JOINT, "every task's data, the sampling, the balancer, the epoch callbacks"),
    Override(TRAINER, "_setup_train", JOINT, "DDP: no wrapper, rank 0's weights; then the step's setup", "self"),
    Override(TRAINER, "get_dataset", JOINT, "one TaskPart per task of the data YAML"),
    Override(TRAINER, "get_model", JOINT, "a unified checkpoint's heads must fit the data's class counts"),
    Override(TRAINER, "build_optimizer", JOINT, "a group for the balancer's learnable weights"),
    Override(TRAINER, "get_dataloader", JOINT, "every task's own loader (shared images: one), as one JointLoader"),
    Override(TRAINER, "preprocess_batch", JOINT, "each task's batches through its own preprocessing, as one step"),
    Override(TRAINER, "optimizer_step", JOINT, "DDP: the gradients averaged over the ranks first"),
    Override(TRAINER, "save_model", JOINT, "last.pt also holds the balancer's state"),
    Override(TRAINER, "resume_training", JOINT, "the balancer's state and diagnostics.csv rows"),
    Override(TRAINER, "get_validator", JOINT, "every task's validator, one fitness"),
    Override(TRAINER, "set_class_weights", JOINT, "class weights are per task: not applied jointly"),
    Override(TRAINER, "progress_string", JOINT, "each task's loss items in the progress bar"),
    Override(TRAINER, "plot_training_samples", JOINT, "each task's batch plotted by its own trainer"),
    Override(TRAINER, "plot_training_labels", JOINT, "each task's labels plotted by its own trainer"),
    Override(TRAINER, "_close_dataloader_mosaic", JOINT, "close mosaic in every training stream's loader", "self"),
    Override(TRAINER, "_do_train", "ultralytics_api.loop_source", "joint training runs in it (LOOP_SEAM)", "self",
             kind="call"),
    Override(TRAINER, "_close_dataloader_mosaic", "TaskPart.close_mosaic", "its task trainer's, on the part", "self",
             kind="call"),
    # the validators (models/unified/val.py)
    Override(VALIDATOR, "__init__", "UnifiedValidatorMixin", "the package's keys left out of Ultralytics' check"),
    Override(VALIDATOR, "__call__", "UnifiedValidatorMixin", "a standalone run resolves the multi-task data YAML"),
    Override(VALIDATOR, "init_metrics", "UnifiedValidatorMixin", "the metrics with the task's class names"),
    Override(VALIDATOR, "postprocess", "UnifiedValidatorMixin", "the task's output of the model's (det, seg, cls)"),
    Override(VALIDATOR, "get_dataloader", "UnifiedValidatorMixin", "the loader with the task's class names"),
    Override(VALIDATOR, "preprocess", "UnifiedValidatorMixin", "labels in the model's class ids (matched by name)"),
    Override(CLS_VALIDATOR, "update_metrics", "UnifiedClassificationValidator", "classes the model lacks left out"),
    Override(CLS_VALIDATOR, "init_metrics", "UnifiedClassificationValidator", "classes named by the data YAML"),
    # the predictor and its results (models/unified/predict.py)
    Override(PREDICTOR, "__init__", "UnifiedPredictor", "the unified task; the package's keys left out"),
    Override(PREDICTOR, "stream_inference", "UnifiedPredictor", "on the package's CPU threads"),
    Override(PREDICTOR, "setup_model", "UnifiedPredictor", "class names per task from the model or its metadata"),
    Override(PREDICTOR, "setup_source", "UnifiedPredictor", "an empty or non-image file fails with its name"),
    Override(PREDICTOR, "preprocess", "UnifiedPredictor", "the letterbox val and every export use"),
    Override(PREDICTOR, "pre_transform", "UnifiedPredictor", "the letterbox val and every export use"),
    Override(PREDICTOR, "postprocess", "UnifiedPredictor", "NMS on det, class map of seg, probabilities of cls"),
    Override(PREDICTOR, "construct_results", "UnifiedPredictor", "UnifiedResults: boxes, semantic mask and probs"),
    Override(PREDICTOR, "construct_result", "UnifiedPredictor", "UnifiedResults: boxes, semantic mask and probs"),
    Override(RESULTS, "__init__", "UnifiedResults", "the three outputs, each task's class names"),
    Override(RESULTS, "new", "UnifiedResults", "an empty result keeps the task names and outputs' slots"),
    Override(RESULTS, "summary", "UnifiedResults", "the detections' summary (to_json, to_csv, to_df)"),
    Override(RESULTS, "save_txt", "UnifiedResults", "the detections in YOLO text format"),
    Override(RESULTS, "save_crop", "UnifiedResults", "one crop per detection"),
    Override(RESULTS, "verbose", "UnifiedResults", "detections, largest segmentation classes, top-1 class"),
    Override(RESULTS, "plot", "UnifiedResults", "the class map overlaid with a legend, the image class, the boxes"),
    # the exporter (export.py) and the names it patches
    Override(EXPORTER, "__init__", "UnifiedExporter", "seg_argmax; the package's keys left out"),
    Override(EXPORTER, "__call__", "UnifiedExporter", "checks the heads; on the package's CPU threads"),
    Override(EXPORTER, "get_int8_calibration_dataloader", "UnifiedExporter", "INT8 calibration on every task"),
    Override(EXPORTER, "export_onnx", "UnifiedExporter", "the three outputs named"),
    Override(EXPORTER, "export_openvino", "UnifiedExporter", "the three outputs named"),
    Override("ultralytics.utils.export.engine", "torch2onnx", "UnifiedExporter.export_onnx",
             "during export_onnx: the outputs named det, seg, cls and their dynamic axes",
             "model, im, output_file, opset=14, input_names=None, output_names=None, dynamic=None", kind="patch"),
    Override("ultralytics.utils.export.openvino", "torch2openvino", "UnifiedExporter.export_openvino",
             "during export_openvino: the outputs named det, seg, cls",
             "model, im, output_dir=None, dynamic=False, quantize=None, calibration_dataset=None, int8_detect=False, "
             "prefix=''", kind="patch"),
    Override("nncf", "quantize", "export.nncf_options",
             "during OpenVINO INT8: global ranges, bias correction, the stem in float", kind="patch"),
    # the Model class (model.py)
    Override(MODEL, "__init__", "UnifiedYOLO", "the unified task; other tasks' models refused"),
    Override(MODEL, "task_map", "UnifiedYOLO", "the unified task's model and predictor"),
    Override(MODEL, "_new", "UnifiedYOLO", "a packaged model YAML by name", "self, cfg, task=None, verbose=False"),
    Override(MODEL, "_load", "UnifiedYOLO", "predict at the deployment image size", "self, weights, task=None"),
    Override(MODEL, "train", "UnifiedYOLO", "the workflows: one task, joint, protocol"),
    Override(MODEL, "val", "UnifiedYOLO", "every task of a multi-task data YAML"),
    Override(MODEL, "export", "UnifiedYOLO", "UnifiedExporter, seg_argmax"),
    Override(MODEL, "benchmark", "UnifiedYOLO", "the unified model against separate ones"),
    Override(MODEL, "info", "UnifiedYOLO", "then what the checkpoint knows (tasks, classes, lineage, memory)"),
    Override(MODEL, "_check_is_pytorch_model", "UnifiedYOLO.train, export", "an export cannot train or export",
             "self", kind="call"),
    # the network (nn/)
    Override(BASE_MODEL, "__init__", "UnifiedModel", "parsed backbone, then the unified neck and head"),
    Override(BASE_MODEL, "load", "UnifiedModel", "matching tensors of any YOLOv8 checkpoint"),
    Override(BASE_MODEL, "loss", "UnifiedModel", "the batch's task loss plus strategies' terms; a joint step's own"),
    Override(BASE_MODEL, "init_criterion", "UnifiedModel", "one Ultralytics loss per task"),
    Override(DETECT, "__init__", "UnifiedHead", "one shared tower, one projection per task"),
    Override(DETECT, "forward", "UnifiedHead", "raw outputs of every task, or (det, seg, cls, raw) at inference"),
    Override(DETECT, "forward_head", "UnifiedHead", "every task's projection of the shared tower"),
    Override(DETECT, "bias_init", "UnifiedHead", "the detection and classification biases"),
    Override(DETECT, "fuse", "UnifiedHead", "each level's BatchNorm folded into the shared conv"),
    Override(DETECT, "end2end", "UnifiedHead", "never end-to-end: NMS runs on det"),
    Override(DETECT, "one2many", "UnifiedHead", "the detection projection as Ultralytics' box and class heads"),
    Override(DETECT, "_inference", "UnifiedHead.forward", "Ultralytics' box decoding of det", "self, x", kind="call"),
    Override("ultralytics.utils.loss.SemanticSegmentationLoss", "forward", "SemanticLoss", "the same loss, faster"),
    # shared images (data/shared.py)
    Override("ultralytics.data.augment.Format", "apply_image", "SharedFormat", "the semantic mask as a tensor too"),
    Override(DATASET, "__init__", "SharedDataset", "which label files (boxes, mask) each image has"),
    Override(DATASET, "build_transforms", "SharedDataset", "mixing transforms among images with the same labels"),
    Override(DATASET, "format_class", "SharedDataset", "SharedFormat"),
    Override(DATASET, "get_image_and_label", "SharedDataset", "boxes and mask, each where the image has it"),
    # settings, threads and several processes
    Override("ultralytics.cfg", "_handle_deprecation", "workflows.base.check_keys", "deprecated keys renamed, as yolo",
             "custom", kind="call"),
    Override("ultralytics.utils.torch_utils", "NUM_THREADS", "defaults.pinned_threads",
             "a unified run uses every core (Ultralytics leaves one idle), restored after", kind="patch"),
    Override("torch.nn.parallel", "DistributedDataParallel", "UnifiedTrainerMixin._setup_train",
             "during CPU DDP setup: CpuDDP, without device_ids", kind="patch"),
    Override("torch.nn.parallel", "DistributedDataParallel", "JointTrainer._setup_train",
             "during setup: SameStart, rank 0's weights and no wrapper (the joint step averages)", kind="patch"),
    Override("torch.distributed", "is_initialized", "ddp.rank_zero_alone",
             "while rank 0 works alone: Ultralytics' rank-0-first barriers skipped", kind="patch"),
    Override("ultralytics.utils", "RANK", "ddp.rank_zero_alone",
             "while rank 0 works alone: -1 in every loaded Ultralytics module holding the process's", kind="patch"),
)
# fmt: on

# Lines of Ultralytics' BaseTrainer._do_train that joint training's hooks rely on (whitespace aside).
LOOP_SEAM: tuple[str, ...] = (
    "batch = self.preprocess_batch(batch)",  # JointTrainer.preprocess_batch makes the step one batch
    "loss, self.loss_items = self.model(batch)",  # whose loss is the joint step's (UnifiedModel.loss, STEP)
    "self.loss *= self.world_size",  # DDP: the joint step hands its loss over divided by it
    "self.scaler.scale(self.loss).backward()",  # a gradient-level step's leaf: nothing more to add
    "self.optimizer_step()",  # DDP: the gradients averaged there
    'batch.get("cls", batch["img"]).shape[0]',  # the progress bar: the step's first batch
    'self.run_callbacks("on_train_epoch_start")',  # JointTrainer._start_epoch
    'self.run_callbacks("on_train_epoch_end")',  # JointTrainer._end_epoch: the epoch's loss items
    "self.validator.dataloader = self.test_loader",  # out-of-memory retry: JointValidator.dataloader
)


def resolve(target: str, name: str) -> Any:
    """The object ``target.name`` (a class or module path, then an attribute) in the installed packages."""
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


def loop_source() -> str:
    """Ultralytics' ``BaseTrainer._do_train`` source, whitespace collapsed."""
    trainer = importlib.import_module(TRAINER.rpartition(".")[0]).BaseTrainer
    return re.sub(r"\s+", " ", inspect.getsource(trainer._do_train))


def signature_changes() -> list[str]:
    """One line per pinned private name the installed Ultralytics lacks or changed, and per lost `LOOP_SEAM` line."""
    changes = []
    for o in (o for o in OVERRIDES if o.private and o.target.startswith("ultralytics")):
        try:
            found = resolve(o.target, o.name)
        except (AttributeError, ImportError):
            changes.append(f"{o.target}.{o.name} is gone (yolo-unified's {o.by} relies on it: {o.why})")
            continue
        if o.signature and (now := parameters(found)) != o.signature:
            changes.append(f"{o.target}.{o.name}({now}) was ({o.signature}) in Ultralytics {PINNED_ULTRALYTICS}")
    source = loop_source()
    changes += [f"{TRAINER}._do_train no longer has `{line}` (joint training runs in it)" for line in LOOP_SEAM
                if re.sub(r"\s+", " ", line) not in source]  # fmt: skip
    return changes
