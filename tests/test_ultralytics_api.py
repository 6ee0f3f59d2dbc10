"""The list of Ultralytics internals yolo-unified replaces is complete, and the pinned Ultralytics still has them."""

from ultralytics.engine.trainer import BaseTrainer

from yolo_unified import UnifiedYOLO
from yolo_unified.export import UnifiedExporter
from yolo_unified.models.unified.joint import JointTrainer
from yolo_unified.models.unified.predict import UnifiedPredictor
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.models.unified.val import VALIDATORS
from yolo_unified.nn import UnifiedModel
from yolo_unified.ultralytics_api import OVERRIDES, PINNED_ULTRALYTICS, signature_changes

CLASSES = (*TRAINERS.values(), JointTrainer, *VALIDATORS.values(), UnifiedPredictor, UnifiedExporter, UnifiedYOLO,
           UnifiedModel)  # fmt: skip


def overridden(cls: type) -> set[tuple[str, str]]:
    """(our class, method) for every attribute one of our classes in `cls`'s MRO defines over an Ultralytics one."""
    ours = [c for c in cls.__mro__ if c.__module__.startswith("yolo_unified")]
    theirs = [c for c in cls.__mro__ if c.__module__.startswith("ultralytics")]
    return {
        (c.__name__, name)
        for c in ours
        for name in vars(c)
        if name != "__init__" and not name.startswith("__") or name == "__call__"
        if any(name in vars(t) for t in theirs)
    }


def test_every_override_is_listed_with_its_reason():
    found = set().union(*(overridden(cls) for cls in CLASSES))
    listed = {(o.by, o.name) for o in OVERRIDES}
    assert not found - listed, f"overrides missing from yolo_unified/ultralytics_api.py: {sorted(found - listed)}"
    assert all(o.why for o in OVERRIDES)


def test_the_installed_ultralytics_has_the_pinned_internals():
    changes = signature_changes()
    assert not changes, f"Ultralytics differs from {PINNED_ULTRALYTICS}:\n" + "\n".join(changes)


def test_a_changed_private_signature_is_named(monkeypatch):
    monkeypatch.setattr(BaseTrainer, "_handle_nan_recovery", lambda self, epoch, retries=3: False)
    monkeypatch.delattr(BaseTrainer, "_setup_ddp")
    changes = "\n".join(signature_changes())
    assert "BaseTrainer._handle_nan_recovery(self, epoch, retries=3) was (self, epoch)" in changes
    assert "BaseTrainer._setup_ddp is gone" in changes
