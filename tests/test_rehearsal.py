"""Rehearsal: the memory a stage leaves (stored images), drawn reproducibly, saved with the model, and what it keeps."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from ultralytics.cfg import get_cfg

from yolo_unified import workflows
from yolo_unified.common import STATE_FILE
from yolo_unified.continual import StageContext
from yolo_unified.continual.base import memory_size
from yolo_unified.continual.replay import Replay
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.nn import UnifiedModel
from yolo_unified.workflows.base import stage_memory


@pytest.fixture
def names(synth_yaml):
    return task_names(load_data_config(synth_yaml))


TINY = {"imgsz": 64, "batch": 4, "workers": 0, "plots": False, "optimizer": "AdamW", "warmup_epochs": 0}


@pytest.mark.parametrize(
    "size, available, kept", [(10, 96, 10), (0.1, 96, 9), (0.1, 240, 24), (0.01, 50, 1), (20, 8, 8)]
)
def test_memory_size_is_a_number_of_images_or_a_share_of_them(size, available, kept):
    assert memory_size(size, available) == kept


def test_the_memory_is_drawn_reproducibly_and_saved_beside_the_model(synth_yaml, tmp_path):
    seg = {"task": "seg", "data": synth_yaml, "epochs": 1, "replay": {"size": 0.5}, "project": str(tmp_path)}
    runs = [workflows.train(**seg, seed=3, name=f"run{i}", **TINY) for i in range(2)]
    first, second = (stage_memory(r["weights"]) for r in runs)
    assert len(first["replay"]["seg"]) == 4 and first["replay_of"] == {"seg": 8}  # half of the 8 training images
    for a, b in zip(first["replay"]["seg"], second["replay"]["seg"], strict=True):
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["semantic_mask"], b["semantic_mask"])
    other = workflows.train(**seg, seed=4, name="seed4", **TINY)
    drawn = stage_memory(other["weights"])["replay"]["seg"]
    assert not all(torch.equal(a["img"], b["img"]) for a, b in zip(first["replay"]["seg"], drawn, strict=True))


def replay_of_stored_seg(model: UnifiedModel, tmp_path, **settings) -> Replay:
    """A later stage's replay of four stored segmentation images, its teacher `model` (saved as a checkpoint)."""
    torch.save({"model": copy.deepcopy(model)}, tmp_path / "teacher.pt")
    drawn = torch.Generator().manual_seed(0)  # the same stored images at every call
    masks = torch.randint(0, 4, (4, 1, 32, 32), dtype=torch.uint8, generator=drawn)
    stored = [{"img": torch.rand(1, 3, 32, 32, generator=drawn), "semantic_mask": m} for m in masks]
    context = StageContext(index=1, task="det", previous=["seg"], prev_weights=str(tmp_path / "teacher.pt"))
    context.memory = {"replay": {"seg": stored}}
    replay = Replay({"batch": 4, **settings}, context)
    replay.setup(type("T", (), {"device": torch.device("cpu"), "args": get_cfg()})())
    return replay


def test_replay_distill_adds_the_distance_to_the_starting_models_outputs(names, tmp_path):
    model = UnifiedModel(task_names=names, verbose=False).eval()  # eval: the same outputs as the teacher's
    model.args = get_cfg()
    img = {"img": torch.zeros(2, 3, 32, 32)}
    replay = replay_of_stored_seg(model, tmp_path, distill=1.0)
    with torch.no_grad():
        _, parts = replay.loss(model, {}, img)
        assert float(parts["replay_distill"]) == pytest.approx(0.0, abs=1e-6)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        replay.rng.seed(0)
        total, parts = replay.loss(model, {}, img)
        plain = replay_of_stored_seg(model, tmp_path)
        plain.rng.seed(0)  # the same draw
        replayed, plain_parts = plain.loss(model, {}, img)
    assert float(parts["replay_distill"]) > 1e-4 and "replay_distill" not in plain_parts
    assert float(total) == pytest.approx(float(replayed) + float(parts["replay_distill"]), rel=1e-5)


def test_augmented_replay_trains_on_moved_images_with_their_moved_masks(names, tmp_path):
    model = UnifiedModel(task_names=names, verbose=False).eval()
    model.args = get_cfg()
    replay = replay_of_stored_seg(model, tmp_path, augment=True)
    seen = []
    criterion = model.init_criterion()
    model.criterion = type(
        "C", (), {"__call__": lambda self, preds, batch: seen.append(batch) or criterion(preds, batch)}
    )()
    with torch.no_grad():
        replay.loss(model, {}, {"img": torch.zeros(2, 3, 32, 32)})
    stored = torch.cat([s["img"] for s in replay.buffers["seg"]])
    assert seen[0]["img"].shape == (4, 3, 32, 32)
    assert not any(torch.equal(i, s) for i in seen[0]["img"] for s in stored)  # every draw moved
    assert seen[0]["semantic_mask"].shape == (4, 32, 32) and (seen[0]["semantic_mask"] == 255).any()


CLS_FIRST = {"task": "cls", "epochs": 20, "lr0": 0.002, "replay": {"size": 48}}  # every training image stored
FULL_RATE_DET = {"task": "det", "epochs": 6, "lr0": 0.01, "lr_mult": {"cls": 0.0}}  # the whole shared network learns


@pytest.fixture(scope="module")
def classified(tmp_path_factory) -> Path:
    """A protocol run that has finished its classification stage (48 training images at 64 px), all of them stored."""
    root = tmp_path_factory.mktemp("rehearsal")
    data = make_synthetic(root / "data", n_train=48, n_val=24, imgsz=64, seed=0)
    workflows.train(data=str(data), stages=[CLS_FIRST], seed=0, project=str(root), name="first", **{**TINY, "batch": 8})
    return root / "first"


def top1_after_detection(first: Path, run: Path, rehearsal: dict) -> tuple[float, float]:
    """Classification's top-1 right after its stage and after a full-rate detection stage with `rehearsal` settings
    (the run in `first` continued in a copy, `run`, as a resumed protocol goes on after its finished stages)."""
    shutil.copytree(first, run)
    state = json.loads((run / STATE_FILE).read_text())
    state["config"]["stages"].append({**FULL_RATE_DET, **rehearsal})
    (run / STATE_FILE).write_text(json.dumps(state))
    scores = [s["scores"]["cls"]["metrics/accuracy_top1"] for s in workflows.train(resume=str(run))["stages"]]
    return scores[0], scores[1]


def test_rehearsal_keeps_the_first_task_better_than_training_without_it(classified, tmp_path):
    own, plain = top1_after_detection(classified, tmp_path / "plain", {})
    _, kept = top1_after_detection(classified, tmp_path / "rehearsed", {"replay": {"batch": 8}})
    assert own > 0.5  # above chance (1/3): there is something to keep
    assert plain < own - 0.15  # the full-rate detection stage forgets it without rehearsal
    assert kept > plain + 0.1, (own, plain, kept)
