"""The unified model: YOLOv8n layers 0-9, an FPN and one head for detection, segmentation and classification."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel, parse_model
from ultralytics.utils import LOGGER, YAML
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.torch_utils import initialize_weights

from yolo_unified.common import BACKBONE_LAYERS
from yolo_unified.defaults import without_unified_keys
from yolo_unified.files import allow_in_checkpoints
from yolo_unified.nn.loss import SemanticLoss
from yolo_unified.nn.modules import UnifiedFPN, UnifiedHead

CFG_DIR = Path(str(files("yolo_unified.cfg")))  # the repo's top-level cfg/, installed as a package
DEFAULT_MODEL_YAML = "yolov8n-unified.yaml"
STEP = "step"  # the batch key of a whole training step: a callable giving the step's loss and items from the model
HEAD_MODULES = {"UnifiedFPN": UnifiedFPN, "UnifiedHead": UnifiedHead}


def model_yaml_path(cfg: str | Path) -> Path:
    """The model YAML `cfg`: a path, or the name of a file in the packaged ``cfg/models`` folder."""
    path = Path(cfg)
    if not path.is_file():
        path = CFG_DIR / "models" / path.name
    if not path.is_file():
        known = sorted(p.name for p in (CFG_DIR / "models").glob("*.yaml"))
        raise FileNotFoundError(f"model config '{cfg}' not found; packaged model configs: {known}")
    return path


def load_model_yaml(cfg: str | Path) -> dict:
    """Load a model YAML from a path, or by name from the packaged ``cfg/models`` folder."""
    path = model_yaml_path(cfg)
    d = YAML.load(path)
    d["yaml_file"] = str(path)
    return d


def batch_task(batch: dict) -> str:
    """Name the task a batch belongs to from the labels it carries."""
    if "semantic_mask" in batch:
        return "seg"
    return "det" if "bboxes" in batch else "cls"


def select_images(raw: dict, index: torch.Tensor) -> dict:
    """The raw outputs (`UnifiedLoss.raw`) of the images `index` of their batch (every output is batch-first)."""
    return {k: [x[index] for x in v] if isinstance(v, (list, tuple)) else v[index] for k, v in raw.items()}


def loss_scale(batch: dict) -> int:
    """How many images Ultralytics sums the batch's loss over: the batch size for det and seg, 1 for cls (a mean)."""
    return batch["img"].shape[0] if batch_task(batch) != "cls" else 1


def check_class_lists(model: nn.Module, source: Any) -> None:
    """Raise a ValueError naming `source` when a task's class list and head outputs differ in length."""
    head, names = model.model[-1], getattr(model, "task_names", None)
    if not isinstance(head, UnifiedHead) or not names:
        return
    outputs = {"det": head.nc, "seg": head.nc_seg, "cls": head.nc_cls}
    if bad := [f"{t} {len(names[t])} names vs {n} outputs" for t, n in outputs.items() if len(names.get(t, ())) != n]:
        raise ValueError(f"{source}: its class lists do not match its head ({'; '.join(bad)}); it cannot be used")


class UnifiedModel(DetectionModel):
    """One network, three tasks: ``(det, seg, cls)`` from a single forward pass. The YAML's ``backbone`` rows are
    parsed by Ultralytics' ``parse_model`` (YOLOv8's layers, weights), its ``head`` rows name ``UnifiedFPN`` and
    ``UnifiedHead``. ``task_names`` holds each task's class names; ``names`` are the detection ones."""

    task = "unified"  # Ultralytics' YOLO() reads this from checkpoints and refuses the unknown task with a clear error

    def __init__(
        self,
        cfg: str | Path | dict = DEFAULT_MODEL_YAML,
        ch: int = 3,
        nc: int | None = None,
        verbose: bool = True,
        task_names: dict[str, dict[int, str]] | None = None,
    ):
        """Build the model; class counts come from ``task_names`` when given (else ``nc`` / the YAML)."""
        nn.Module.__init__(self)
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else load_model_yaml(cfg)
        self.yaml["channels"] = ch
        counts = {"det": "nc", "seg": "nc_seg", "cls": "nc_cls"}
        if nc:
            self.yaml["nc"] = nc
        for task, names in (task_names or {}).items():
            self.yaml[counts[task]] = len(names)
        self.model, self.save = self._build(self.yaml, ch, verbose)
        self.task_names = {
            task: dict((task_names or {}).get(task) or {i: str(i) for i in range(self.yaml[key])})
            for task, key in counts.items()
        }
        self.names = self.task_names["det"]
        self.inplace = True

        head = self.model[-1]
        s = 256
        self.model.eval()
        head.training = True
        feats = self.forward(torch.zeros(1, ch, s, s))["feats"]
        head.stride = torch.tensor([s / f.shape[-2] for f in feats])
        self.stride = head.stride
        self.model.train()
        initialize_weights(self)
        head.bias_init()
        if verbose:
            self.info()

    @staticmethod
    def _build(d: dict, ch: int, verbose: bool) -> tuple[nn.Sequential, list[int]]:
        """Parse the backbone with Ultralytics, then add the neck and head rows with the widths they tap."""
        backbone, save = parse_model({**deepcopy(d), "head": []}, ch=ch, verbose=verbose)
        widths, x = [], torch.zeros(1, ch, 64, 64)
        with torch.no_grad():
            for m in backbone.eval():  # backbone rows are sequential; record each layer's width
                x = m(x)
                widths.append(x.shape[1])
        backbone.train()
        layers = list(backbone)
        for f, _, name, args in d["head"]:
            if name not in HEAD_MODULES:
                raise ValueError(f"unknown head module '{name}', expected one of {sorted(HEAD_MODULES)}")
            args = [d[a] if isinstance(a, str) and a in d else a for a in args]
            i = len(layers)
            if name == "UnifiedFPN":
                m = UnifiedFPN([widths[j] for j in f], *args)
                widths.append(args[0])
            else:
                m = UnifiedHead(*args, reg_max=d.get("reg_max", 16), ch=[widths[-1]] * len(layers[-1].lateral))
                widths.append(None)
            m.i, m.f, m.type, m.np = i, f, name, sum(p.numel() for p in m.parameters())
            save.extend(j for j in ([f] if isinstance(f, int) else f) if j != -1)
            layers.append(m)
            if verbose:
                LOGGER.info(f"{i:>3}{f!s:>20}{1:>3}{m.np:10.0f}  {name:<45}{args!s:<30}")
        return nn.Sequential(*layers), sorted(set(save))

    def load(self, weights: Any, verbose: bool = True) -> int:
        """Copy every tensor whose name and shape match from a checkpoint or model; return how many were copied."""
        src = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        csd = src.float().state_dict()
        own = self.state_dict()
        match = {k: v for k, v in csd.items() if k in own and v.shape == own[k].shape}
        self.load_state_dict(match, strict=False)
        if verbose:
            backbone = sum(k.startswith(f"model.{i}.") for k in match for i in range(BACKBONE_LAYERS))
            LOGGER.info(
                f"Transferred {len(match)}/{len(own)} tensors from pretrained weights "
                f"({backbone} in backbone layers 0-{BACKBONE_LAYERS - 1})"
            )
        return len(match)

    def loss(
        self, batch: dict, preds: Any = None, terms: Sequence[Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's task loss plus the strategies' per-image terms (`terms`, default the ``loss_terms`` the task
        trainers set on the model they train, not its EMA), scaled as Ultralytics' task loss. A ``STEP`` batch (the
        joint trainer's) returns ``batch[STEP](self)``, the step's own loss and items."""
        if STEP in batch:
            return batch[STEP](self)
        if getattr(self, "criterion", None) is None:
            self.criterion = self.init_criterion()
        preds = self.forward(batch["img"]) if preds is None else preds
        loss, items = self.criterion(preds, batch)
        terms = getattr(self, "loss_terms", ()) if terms is None else terms
        added = [t for t in (s.loss(self, self.criterion.raw(preds), batch) for s in terms) if t]
        if added:
            loss = loss.sum() + loss_scale(batch) * sum(term for term, _ in added)
            items = {**items, **{k: v for _, parts in added for k, v in parts.items()}}
        return loss, items

    def init_criterion(self) -> UnifiedLoss:
        """Return the loss that dispatches each batch to its task's Ultralytics loss."""
        return UnifiedLoss(self)


allow_in_checkpoints(UnifiedModel)  # safe mode (ULTRALYTICS_SAFE_LOAD=1) loads unified checkpoints


class UnifiedLoss:
    """Ultralytics' own losses, one per task (``v8DetectionLoss``; CE + Dice by ``SemanticLoss``; cross-entropy); a
    batch gets the loss of the task its labels belong to."""

    def __init__(self, model: UnifiedModel):
        """Keep the model; sub-losses are built on first use (so class weights of the training task apply)."""
        self.model = model
        self.criteria: dict[str, Any] = {}

    def _view(self, nc: int) -> SimpleNamespace:
        """What Ultralytics' loss constructors read from a model, restricted to one task with `nc` classes."""
        m, head = self.model, self.model.model[-1]
        args = getattr(m, "args", None)
        args = args if hasattr(args, "box") else get_cfg(overrides=without_unified_keys(args))
        weights = getattr(m, "class_weights", None)
        return SimpleNamespace(
            model=[SimpleNamespace(nc=nc, reg_max=head.reg_max, stride=head.stride)],
            args=args,
            parameters=m.parameters,
            class_weights=weights if weights is not None and len(weights) == nc else None,
        )

    def criterion(self, task: str):
        """Return (building once) the Ultralytics loss of `task`."""
        if task not in self.criteria:
            head = self.model.model[-1]
            if task == "det":
                self.criteria[task] = v8DetectionLoss(self._view(head.nc))
            elif task == "seg":
                self.criteria[task] = SemanticLoss(self._view(head.nc_seg))
        return self.criteria.get(task)

    @staticmethod
    def raw(preds: dict | tuple) -> dict:
        """The raw output dict, from training outputs or from an inference ``(det, seg, cls, raw)`` tuple."""
        return preds[-1] if isinstance(preds, (tuple, list)) else preds

    def __call__(self, preds: dict | tuple, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the batch's task on raw or inference outputs; returns (loss, detached items)."""
        raw = self.raw(preds)
        task = batch_task(batch)
        if task == "det":
            return self.criterion("det").loss(raw, batch)
        if task == "seg":
            loss, items = self.criterion("seg")(raw["seg"], batch)
            items.pop("aux_loss", None)  # the unified head has no auxiliary seg output
            return loss, items
        loss = F.cross_entropy(raw["cls"], batch["cls"].to(raw["cls"].device))
        return loss, {"loss": loss.detach()}
