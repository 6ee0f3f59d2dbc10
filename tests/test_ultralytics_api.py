"""The list of Ultralytics internals yolo-unified depends on is complete and true, and the pinned Ultralytics still has
them: every class of the package with an Ultralytics base is found by walking its modules, and every private call and
patch by reading their source."""

import ast
import importlib
import inspect
import pkgutil
import types
from pathlib import Path

from ultralytics.engine.trainer import BaseTrainer

import yolo_unified
from yolo_unified.ultralytics_api import OVERRIDES, PINNED_ULTRALYTICS, signature_changes

MODULES = [
    importlib.import_module(info.name)
    for info in pkgutil.walk_packages(yolo_unified.__path__, "yolo_unified.")
    if not info.name.endswith("__main__")  # runs the command line
]


def from_ultralytics(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "ultralytics"


CLASSES = [  # every class defined in the package with an Ultralytics class among its bases
    obj
    for module in MODULES
    for obj in vars(module).values()
    if inspect.isclass(obj) and obj.__module__ == module.__name__ and any(map(from_ultralytics, obj.__mro__[1:]))
]
THEIRS = {c for cls in CLASSES for c in cls.__mro__ if from_ultralytics(c)}


def overridden(cls: type) -> set[tuple[str, str]]:
    """(our class, name) for every attribute one of our classes in `cls`'s MRO defines over an Ultralytics one."""
    ours = [c for c in cls.__mro__ if c.__module__.startswith("yolo_unified")]
    theirs = [c for c in cls.__mro__ if from_ultralytics(c)]
    return {
        (c.__name__, name)
        for c in ours
        for name in vars(c)
        if name in {"__init__", "__call__"} or not name.startswith("__")
        if any(name in vars(t) for t in theirs)
    }


def private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def source_uses() -> tuple[set[str], set[str]]:
    """The private Ultralytics names the package's source uses (attributes of the Ultralytics classes it derives from,
    of Ultralytics modules, names imported from them), and the names it patches (``patch.object(owner, "name", ...)``,
    or an attribute of a module assigned)."""
    private = {name for c in THEIRS for name in vars(c) if private_name(name)}
    used, patched = set(), set()
    for module in MODULES:
        bound = vars(module)
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Attribute) and private_name(node.attr):
                owner = bound.get(node.value.id) if isinstance(node.value, ast.Name) else None
                if node.attr in private or isinstance(owner, types.ModuleType) and from_ultralytics(owner):
                    used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ultralytics"):
                used |= {alias.name for alias in node.names if private_name(alias.name)}
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "patch.object":
                patched.add(node.args[1].value)
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                patched |= {
                    t.attr
                    for t in targets
                    if isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and isinstance(bound.get(t.value.id), types.ModuleType)
                }
    return used, patched


def test_the_walk_finds_every_kind_of_class():
    names = {cls.__name__ for cls in CLASSES}
    assert {"UnifiedHead", "UnifiedResults", "SharedDataset", "SharedFormat", "SemanticLoss", "JointTrainer"} <= names
    assert len(CLASSES) >= 16 and not {"JointValidator", "TaskPart", "CpuDDP"} & names  # no Ultralytics base


def test_every_override_is_listed_with_its_reason_and_every_listed_one_exists():
    found = set().union(*(overridden(cls) for cls in CLASSES))
    listed = {(o.by, o.name) for o in OVERRIDES if o.kind == "override"}
    assert not found - listed, f"overrides missing from yolo_unified/ultralytics_api.py: {sorted(found - listed)}"
    assert not listed - found, f"listed overrides that are no longer made: {sorted(listed - found)}"
    assert all(o.why and o.kind in {"override", "call", "patch"} for o in OVERRIDES)


def test_every_private_call_and_patch_is_listed():
    used, patched = source_uses()
    named = {o.name for o in OVERRIDES}
    assert used and not used - named, f"private Ultralytics names used but not listed: {sorted(used - named)}"
    listed_patches = {o.name for o in OVERRIDES if o.kind == "patch"}
    assert not patched - listed_patches, f"patches missing from the list: {sorted(patched - listed_patches)}"
    assert not listed_patches - patched, f"listed patches no longer made: {sorted(listed_patches - patched)}"
    calls = {o.name for o in OVERRIDES if o.kind == "call"}
    assert not calls - used, f"listed private calls no longer made: {sorted(calls - used)}"


def test_the_installed_ultralytics_has_the_pinned_internals():
    changes = signature_changes()
    assert not changes, f"Ultralytics differs from {PINNED_ULTRALYTICS}:\n" + "\n".join(changes)


def test_a_changed_private_signature_or_loop_line_is_named(monkeypatch):
    monkeypatch.setattr(BaseTrainer, "_handle_nan_recovery", lambda self, epoch, retries=3: False)
    monkeypatch.delattr(BaseTrainer, "_setup_ddp")
    source = inspect.getsource(BaseTrainer._do_train)
    monkeypatch.setattr(inspect, "getsource", lambda f: source.replace("self.loss *= self.world_size", "pass"))
    changes = "\n".join(signature_changes())
    assert "BaseTrainer._handle_nan_recovery(self, epoch, retries=3) was (self, epoch)" in changes
    assert "BaseTrainer._setup_ddp is gone" in changes
    assert "_do_train no longer has `self.loss *= self.world_size`" in changes
