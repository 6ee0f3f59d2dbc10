"""Single-task training and validation on the built-in synthetic data: losses fall, checkpoints reload, val works."""

import csv
import re
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import YAML

from yolo_unified import UnifiedYOLO, workflows
from yolo_unified.cli import run
from yolo_unified.common import MEMORY_KEY
from yolo_unified.continual import STRATEGIES
from yolo_unified.data.config import load_data_config, task_data
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.models.unified import val as unified_val
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.nn import UnifiedModel
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.base import stage_memory
from yolo_unified.workflows.single import resumed_task, start_model

OVERFIT = dict(  # 4 images, one optimizer step per epoch, no augmentation, constant learning rate: the loss must fall
    epochs=15, imgsz=128, batch=4, nbs=4, optimizer="AdamW", lr0=0.003, lrf=1.0, warmup_epochs=0,
    mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0, erasing=0.0,
    auto_augment=None, close_mosaic=0, plots=False, val=False, workers=0, seed=0,
)  # fmt: skip


def read_results(save_dir: str) -> list[dict[str, float]]:
    with open(Path(save_dir) / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> str:
    """The synthetic three-task data with 4 training images per task at 128 px (64 px is too coarse for stride 32)."""
    return str(make_synthetic(tmp_path_factory.mktemp("data") / "four", n_train=4, n_val=4, imgsz=128, seed=0))


@pytest.mark.parametrize("task", ["seg", "det", "cls"])
def test_loss_falls_when_overfitting_four_images(task, four_images, tmp_path):
    out = workflows.train(task=task, data=four_images, project=str(tmp_path), name=task, **OVERFIT)
    total = [sum(v for k, v in row.items() if k.startswith("train/")) for row in read_results(out["save_dirs"][task])]
    first, last = total[0], sum(total[-3:]) / 3  # the last three epochs: one 4-image batch is a noisy estimate
    assert last < 0.7 * first, f"{task} loss went {first:.4f} -> {last:.4f} ({[round(t, 3) for t in total]})"


@pytest.fixture(scope="module")
def chain(synth_yaml, tmp_path_factory):
    """All three tasks in a row (seg -> det -> cls) without mitigation, two epochs each: cfg/chain.yaml, tiny."""
    project = tmp_path_factory.mktemp("runs")
    tiny = ["epochs=2", "imgsz=64", "batch=8", "workers=0", "plots=False", f"project={project}"]
    return run(["train", f"cfg={CFG_DIR / 'chain.yaml'}", f"data={synth_yaml}", *tiny])


def test_chain_cfg_is_the_synthetic_budget_without_mitigation():
    chain, synth = YAML.load(CFG_DIR / "chain.yaml"), YAML.load(CFG_DIR / "synth.yaml")
    assert {k: chain[k] for k in synth} == synth and [s["task"] for s in chain["stages"]] == ["seg", "det", "cls"]
    assert not set(STRATEGIES).intersection(chain, *chain["stages"])  # every strategy at its default: off


def test_chain_trains_every_task_from_the_previous_weights(chain):
    stages = chain["stages"]
    assert [s["task"] for s in stages] == ["seg", "det", "cls"]
    for previous, stage in pairwise(stages):
        assert YAML.load(Path(stage["save_dir"]) / "args.yaml")["model"] == previous["weights"]
    for stage in stages:
        assert Path(stage["weights"]).is_file() and (Path(stage["save_dir"]) / "results.csv").is_file()
        assert 0.0 <= stage["own_score"] <= 1.0
    root = Path(chain["weights"]).parents[1]
    assert root.name == "chain" and (root / "forgetting.md").is_file()
    assert set(stages[-1]["scores"]) == {"seg", "det", "cls"}  # every task validated after the chain


def test_checkpoint_reloads_as_the_same_unified_model(chain):
    model, ckpt = load_checkpoint(chain["weights"])
    assert isinstance(model, UnifiedModel) and model.task == "unified"
    assert set(model.task_names) == {"seg", "det", "cls"} and model.task_names["seg"][0] == "background"
    rebuilt = UnifiedModel(model.yaml, task_names=model.task_names, verbose=False)
    rebuilt.load(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.float().eval()(x)[:3], rebuilt.eval()(x)[:3], strict=True):
            torch.testing.assert_close(a, b)


def test_val_reports_every_task(chain, synth_yaml, tmp_path):
    results = UnifiedYOLO(chain["weights"]).val(data=synth_yaml, imgsz=64, batch=4, project=str(tmp_path), plots=False)
    assert set(results) == {"seg", "det", "cls"}
    assert 0.0 <= results["seg"]["metrics/mIoU"] <= 1.0
    assert 0.0 <= results["det"]["metrics/mAP50(B)"] <= 1.0
    assert 0.0 <= results["cls"]["metrics/accuracy_top1"] <= 1.0
    assert (tmp_path / "val/metrics.json").is_file() and (tmp_path / "val/metrics.csv").is_file()


def test_val_defaults_to_the_training_image_size(chain, synth_yaml, tmp_path, monkeypatch):
    sizes = {}

    def spy(task, validator):
        def build(save_dir, args):
            sizes[task] = args["imgsz"]
            return validator(save_dir=save_dir, args=args)

        return build

    monkeypatch.setattr(unified_val, "VALIDATORS", {t: spy(t, v) for t, v in unified_val.VALIDATORS.items()})
    UnifiedYOLO(chain["weights"]).val(data=synth_yaml, tasks=["cls"], batch=4, project=str(tmp_path), plots=False)
    assert sizes == {"cls": 64}  # trained at 64 (Ultralytics' default, 640, would score another model)


def test_pretrained_applies_to_a_new_model_only(chain, synth_yaml, tmp_path):
    src = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    torch.save({"model": src}, tmp_path / "yolov8n.pt")

    def built(**overrides) -> UnifiedModel:
        trainer = TRAINERS["det"](overrides={"data": synth_yaml, "save_dir": str(tmp_path / "t"), **overrides})
        trainer.setup_model()
        return trainer.model

    fresh = built(pretrained=str(tmp_path / "yolov8n.pt"))
    torch.testing.assert_close(fresh.model[4].cv1.conv.weight, src.model[4].cv1.conv.weight)
    trained = load_checkpoint(chain["weights"])[0]
    kept = built(model=chain["weights"], pretrained=str(tmp_path / "yolov8n.pt"))  # a later stage keeps its weights
    torch.testing.assert_close(kept.model[4].cv1.conv.weight, trained.model[4].cv1.conv.weight.float())
    missing = built(pretrained=str(tmp_path / "absent.pt"))  # offline / missing file: a warning, then from scratch
    assert isinstance(missing, UnifiedModel)


def test_training_skips_bad_files_and_names_them(synth_yaml, tmp_path, logged):
    """A truncated image, an empty label file, a mask of the wrong size: training goes on and names what it skips."""
    root = tmp_path / "bad"
    shutil.copytree(Path(synth_yaml).parent / "synth", root)
    data = tmp_path / "bad.yaml"
    data.write_text(Path(synth_yaml).read_text().replace("path: synth", f"path: {root}"))
    broken = sorted((root / "det/images/train").glob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    empty = sorted((root / "det/labels/train").glob("*.txt"))[1]
    empty.write_text("")  # an image with no objects: a background image, kept
    mask = sorted((root / "seg/masks/train").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(mask)  # not its image's size
    for task in ("det", "seg"):
        out = workflows.train(task=task, data=str(data), project=str(tmp_path), name=task, epochs=1, imgsz=64, batch=4,
                           workers=0, plots=False)  # fmt: skip
        assert Path(out["weights"]).is_file()
    text = logged.text  # Ultralytics' dataset scan names the file and the problem, and counts what it skipped
    assert f"det/images/train/{broken.name}: ignoring corrupt image/label: Truncated" in text
    assert f"seg/images/train/{mask.stem}.jpg: ignoring corrupt image/mask: mask size (10, 20) does not match" in text


def test_training_on_an_empty_image_file_names_it(synth_yaml, tmp_path):
    """An empty .jpg (or text saved as .jpg) in a split: one error naming the file, not a missing HEIF plugin."""
    root = tmp_path / "empty"
    shutil.copytree(Path(synth_yaml).parent / "synth", root)
    data = tmp_path / "empty.yaml"
    data.write_text(Path(synth_yaml).read_text().replace("path: synth", f"path: {root}"))
    empty = root / "det/images/train/empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeError, match=re.escape(f"{empty} is an empty file, not an image")) as error:
        workflows.train(task="det", data=str(data), project=str(tmp_path), name="det", epochs=1, imgsz=64, workers=0)
    assert "pi_heif" not in str(error.value)
    text = next(iter((root / "cls/train").iterdir())) / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"{text} is not an image")):
        task_data(load_data_config(data), "cls")


def test_resume_of_a_single_task_checkpoint_finds_its_task(tmp_path, monkeypatch):
    """``train resume=last.pt`` of a one-task run resumes that task in its own folder (not a protocol)."""
    for name, args in (("det.pt", {"task": "detect"}), ("joint.pt", {"task": "detect", "joint": True})):
        torch.save({"train_args": args}, tmp_path / name)
    assert resumed_task(tmp_path / "det.pt") == "det"
    assert resumed_task(tmp_path / "joint.pt") is None and resumed_task(tmp_path) is None
    ran = {}
    monkeypatch.setattr(workflows, "train_task", lambda task, keys: ran.update(task=task, keys=keys) or {})
    workflows.train(resume=str(tmp_path / "det.pt"))
    assert ran == {"task": "det", "keys": {"resume": str(tmp_path / "det.pt")}}  # no data=, no new run folder


def test_a_resumed_run_reads_the_memory_of_the_model_it_started_from(tmp_path):
    """The strategies' memory (replay images) comes from ``model=``; a resumed run's from its recorded model."""
    torch.save({"model": None, MEMORY_KEY: {"replay": {"cls": [{"img": torch.zeros(1)}]}}}, tmp_path / "best.pt")
    torch.save({"train_args": {"task": "classify", "model": str(tmp_path / "best.pt")}}, tmp_path / "last.pt")
    assert start_model({"model": str(tmp_path / "best.pt")}) == str(tmp_path / "best.pt")
    for keys in ({"resume": str(tmp_path / "last.pt")}, {"resume": True, "model": str(tmp_path / "last.pt")}):
        assert set(stage_memory(start_model(keys))["replay"]) == {"cls"}
    assert stage_memory(start_model({"model": "yolov8n-unified.yaml"})) == {}
