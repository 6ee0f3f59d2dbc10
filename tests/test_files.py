"""Files a user can trust: safe loading (crafted pickles run nothing), output folders swapped in whole and never over a
user's files (a kill at any step leaves them as before or as after), temporary files that cannot be mistaken."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import ultralytics.nn.tasks as ultralytics_tasks
from test_coco import SQUARE, annotation, make_source
from test_prepare import make_raw

from yolo_unified import files, workflows
from yolo_unified.data import coco as coco_module
from yolo_unified.data import prepare as prepare_module
from yolo_unified.data.class_split import split_classes
from yolo_unified.data.coco import convert_coco
from yolo_unified.data.prepare import prepare_hw2
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.files import OutputFolder, UnreadableFile, load_checkpoint, read_data, save_atomically
from yolo_unified.model import UnifiedYOLO
from yolo_unified.models.unified.train import TRAINERS, UnifiedTrainerMixin
from yolo_unified.nn import UnifiedModel
from yolo_unified.workflows.base import stage_memory

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


class Payload:
    """Unpickling it runs a shell command that creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A unified checkpoint as Ultralytics saves one (model in half precision, training arguments), untrained."""
    file = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = UnifiedModel(verbose=False).half()
    model.task_imgsz = {"det": 64}
    torch.save({"epoch": -1, "model": model, "train_args": {"task": "detect", "imgsz": 64}}, file)
    return file


@pytest.fixture
def safe_mode(monkeypatch):
    """Ultralytics' safe mode on, as ``ULTRALYTICS_SAFE_LOAD=1`` sets it when Ultralytics is imported."""
    monkeypatch.setattr(ultralytics_tasks, "SAFE_LOAD", True)


def crafted(checkpoint: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of `checkpoint` named `name` carrying a payload, and the file the payload would create."""
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name, marker


@pytest.mark.parametrize("safe", [False, True], ids=["default mode", "safe mode"])
def test_a_crafted_memory_pt_runs_nothing_in_either_mode(checkpoint, tmp_path, monkeypatch, synth_yaml, safe):
    monkeypatch.setattr(ultralytics_tasks, "SAFE_LOAD", safe)
    weights = tmp_path / "copied/best.pt"
    weights.parent.mkdir()
    weights.write_bytes(checkpoint.read_bytes())
    marker = tmp_path / "payload-ran"
    torch.save({"ewc": Payload(marker)}, weights.with_name("memory.pt"))
    with pytest.raises(
        UnreadableFile, match="memory.pt refused by safe loading .*posix.system.* nothing in it was run"
    ):
        stage_memory(str(weights))
    with pytest.raises(UnreadableFile, match="memory.pt refused"):  # as `train task=det model=copied/best.pt`
        workflows.train(task="det", model=str(weights), data=synth_yaml, project=str(tmp_path), name="t")
    assert not marker.exists() and not (tmp_path / "t").exists()
    save_atomically({"replay": {"det": [{"img": torch.zeros(1, 3, 4, 4), "cls": torch.ones(1)}]}}, weights.parent / "m")
    assert read_data(weights.parent / "m")["replay"]["det"][0]["img"].shape == (1, 3, 4, 4)  # real memory loads


def test_a_crafted_last_pt_runs_nothing_under_safe_mode(checkpoint, tmp_path, safe_mode):
    last, marker = crafted(checkpoint, tmp_path, "last.pt")
    for load in (
        lambda: workflows.train(resume=str(last)),
        lambda: TRAINERS["det"](overrides={"resume": str(last)}),
        lambda: UnifiedYOLO(last),
        lambda: load_checkpoint(last),
    ):
        with pytest.raises(UnreadableFile, match="last.pt refused by safe loading .*nothing in it was run"):
            load()
    assert not marker.exists()


def test_the_command_line_under_ultralytics_safe_load_refuses_a_crafted_checkpoint(checkpoint, tmp_path):
    last, marker = crafted(checkpoint, tmp_path, "last.pt")
    command = [str(Path(sys.executable).parent / "yolo-unified"), "train", f"resume={last}"]
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "YOLO_OFFLINE": "true"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "refused by safe loading" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and not marker.exists()


def test_safe_mode_loads_a_unified_checkpoint(checkpoint, safe_mode):
    assert files.safe_mode() and files.refused_globals(checkpoint) == []  # every class it pickles is allowed
    model, ckpt = load_checkpoint(checkpoint)
    assert isinstance(model, UnifiedModel) and ckpt["train_args"]["imgsz"] == 64
    det, seg, cls, _ = model(torch.zeros(1, 3, 64, 64))
    assert seg.shape[1] == len(model.task_names["seg"]) and cls.shape[1] == len(model.task_names["cls"])
    assert isinstance(ultralytics_tasks.load_checkpoint(checkpoint)[0], UnifiedModel)  # Ultralytics' own loader too
    assert UnifiedYOLO(checkpoint).task == "unified"


@pytest.mark.parametrize(
    "keep, reason",
    [(0, "is an empty file"), (-1, "is not a PyTorch file"), (0.5, "is unreadable: truncated or damaged"),
     (5000, "is unreadable: truncated or damaged")],
)  # fmt: skip
def test_an_unreadable_resume_checkpoint_says_so(checkpoint, tmp_path, keep, reason):
    data = checkpoint.read_bytes()
    last = tmp_path / "last.pt"
    last.write_bytes(b"not a checkpoint" if keep == -1 else data[: int(keep * len(data)) if keep < 1 else keep])
    for load in (lambda: workflows.train(resume=str(last)), lambda: TRAINERS["det"](overrides={"resume": str(last)})):
        with pytest.raises(UnreadableFile, match=f"{last} {reason}"):  # not Ultralytics' "checkpoint not found"
            load()


def test_a_leftover_temporary_best_never_replaces_a_good_one(tmp_path):
    class UltralyticsSave:
        """Ultralytics' save_model after an epoch that is not a new best: it writes last.pt only."""

        def save_model(self) -> bool:
            self.last.write_bytes(b"new last")
            return True

    class Trainer(UnifiedTrainerMixin, UltralyticsSave):
        """The mixin's atomic save_model over that save."""

        def __init__(self):
            self.nan_stopped, self.last, self.best = False, tmp_path / "last.pt", tmp_path / "best.pt"

    (tmp_path / "best.pt").write_bytes(b"good best")
    (tmp_path / "best.pt.tmp").write_bytes(b"stale")  # what a run killed mid-save left (the old fixed name)
    assert Trainer().save_model()
    assert (tmp_path / "best.pt").read_bytes() == b"good best" and (tmp_path / "last.pt").read_bytes() == b"new last"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "best.pt.tmp", "last.pt"]  # no new leftover


# ------------------------------------------------------------------------------------------------------ converters
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def run_coco(tmp_path: Path, dst: Path, version: int = 0) -> dict:
    """`data coco` of a small source; `version` 1 has one more annotation."""
    anns = [annotation(1, 1, [SQUARE], bbox=(2, 2, 4, 4)), annotation(2, 3, [SQUARE], bbox=(2, 2, 4, 4))]
    src = make_source(tmp_path / "coco-src", anns[: 1 + version], images=(("train", "a.jpg"), ("val", "b.jpg")))
    return convert_coco(src, dst)


def run_prepare(tmp_path: Path, dst: Path, version: int = 0) -> dict:
    """`data prepare` of a small raw HW2 tree; `version` 1 has a wider first box."""
    raw = tmp_path / "raw"
    if not raw.exists():
        make_raw(raw)
    labels = raw / "mini_coco_det/train/labels.json"
    coco = json.loads(labels.read_text())
    coco["annotations"][0]["bbox"] = [2, 3, 20 + version, 30]
    labels.write_text(json.dumps(coco))
    return prepare_hw2(raw, dst)


def run_split(tmp_path: Path, dst: Path, synth_yaml: str, version: int = 0) -> Path:
    """`data split` of the tiny synthetic detection data; `version` 1 keeps other classes."""
    return split_classes(synth_yaml, "det", [["circle"], ["rectangle", "triangle"]][version], dst)


CONVERTERS = {
    "coco": (run_coco, "images/train/user_extra.jpg"),
    "prepare": (run_prepare, "det/labels/train/mine.txt"),
    "split": (run_split, "det/images/train/mine.jpg"),
    "synthetic": (lambda tmp_path, dst, version=0: make_synthetic(dst, 2, 1, 32, seed=version), "det/mine.txt"),
}


@pytest.mark.parametrize("converter", CONVERTERS)
def test_a_users_file_in_dst_survives_each_converter(tmp_path, synth_yaml, converter):
    convert, user_file = CONVERTERS[converter]
    dst = tmp_path / "dst"
    args = (synth_yaml,) if converter == "split" else ()
    convert(tmp_path, dst, *args)
    (dst / user_file).parent.mkdir(parents=True, exist_ok=True)
    (dst / user_file).write_bytes(b"the user's own")
    before = snapshot(dst)
    with pytest.raises(ValueError, match=f"dst {dst} holds 1 file\\(s\\) yolo-unified did not write \\({user_file}\\)"):
        convert(tmp_path, dst, *args, version=1)
    assert snapshot(dst) == before
    fresh = tmp_path / "fresh"  # a folder it never wrote, holding a file: refused too
    (fresh / "notes.txt").parent.mkdir()
    (fresh / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="notes.txt"):
        convert(tmp_path, fresh, *args)
    assert snapshot(fresh) == {"notes.txt": b"keep"}


def test_an_older_versions_output_without_a_manifest_is_replaced_only_where_nothing_is_lost(tmp_path):
    dst = tmp_path / "dst"
    run_coco(tmp_path, dst)
    (dst / ".yolo-unified.json").unlink()  # as an older version left it
    run_coco(tmp_path, dst)  # the same files: nothing to lose
    before = snapshot(dst)
    changed = "has no .yolo-unified.json .* would replace or drop \\(labels/train/a.txt, masks/train/a.png\\)"
    with pytest.raises(ValueError, match=changed):
        run_coco(tmp_path, dst, version=1)  # a label and a mask it would change: not known to be yolo-unified's
    assert snapshot(dst) == before


def test_a_data_yaml_yolo_unified_did_not_write_is_never_overwritten(tmp_path):
    (tmp_path / "dst.yaml").write_text("path: mine\n")
    with pytest.raises(ValueError, match="yaml=.*dst.yaml exists and yolo-unified did not write it"):
        run_coco(tmp_path, tmp_path / "dst")
    assert (tmp_path / "dst.yaml").read_text() == "path: mine\n" and not (tmp_path / "dst").exists()


class Kill(BaseException):
    """A kill injected at one step (a BaseException, as KeyboardInterrupt is)."""


def fail_at(monkeypatch, target: object, name: str, call: int) -> None:
    """Make the `call`-th call of ``target.name`` raise `Kill` before it acts."""
    original, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Kill
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


STEPS = {  # a kill before: the n-th rename of the two-rename swap, the atomic exchange, the cleanup, a file written
    "rename dst away": (Path, "rename", 1),
    "rename build in": (Path, "rename", 2),
    "rename old away": (Path, "rename", 3),
    "exchange": (files, "exchange", 1),
    "cleanup": (files.shutil, "rmtree", 1),
    "writing": (None, "", 2),
}
WRITES = {"coco": (coco_module, "_link_or_copy"), "prepare": (prepare_module.shutil, "copy2")}  # one image each


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("converter", ["coco", "prepare"])
def test_a_kill_at_any_step_leaves_dst_as_before_or_as_after(tmp_path, monkeypatch, converter, step):
    convert = CONVERTERS[converter][0]
    convert(tmp_path, tmp_path / "after")  # what a finished second run leaves (written twice, as dst will be)
    convert(tmp_path, tmp_path / "after", version=1)
    after = snapshot(tmp_path / "after")
    dst = tmp_path / "dst"
    convert(tmp_path, dst)
    before = snapshot(dst)
    assert before != after
    target, name, call = STEPS[step]
    if target is None:
        target, name = WRITES[converter]
    if target is Path:
        monkeypatch.setattr(files, "exchange", lambda a, b: False)  # a system without the atomic swap: two renames
    fail_at(monkeypatch, target, name, call)
    with pytest.raises(Kill):
        convert(tmp_path, dst, version=1)
    monkeypatch.undo()
    assert snapshot(dst) in (before, after), step
    leftovers = [f.name for f in tmp_path.iterdir() if f.name.startswith(".dst")]  # a hard kill's: the next run's
    assert all(f == ".dst.previous" or f.startswith(".dst-") and f.endswith(".tmp") for f in leftovers)
    convert(tmp_path, dst, version=1)  # the next run finishes the job, whatever the kill left
    assert snapshot(dst) == after and not [f for f in tmp_path.iterdir() if f.name.startswith(".dst")]


def test_a_process_killed_between_the_two_renames_is_put_back_by_the_next(tmp_path):
    dst = tmp_path / "dst"
    with OutputFolder(dst, "test") as build:
        (build / "a.txt").write_text("old")
    dst.rename(tmp_path / ".dst.previous")  # killed here: dst moved away, the new folder not yet in place
    OutputFolder(dst, "test")  # the next run's check puts the old folder back first
    assert snapshot(dst)["a.txt"] == b"old" and not (tmp_path / ".dst.previous").exists()
