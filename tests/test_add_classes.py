"""Adding classes to a task the model has: class lists matched by name, the grown head, relabelled batches, and the
old-class strategies (pseudo-labels with the background shift, distillation)."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
import torch
import yaml
from conftest import REPO
from ultralytics.data.utils import load_dataset_cache_file
from ultralytics.nn.tasks import load_checkpoint

from yolo_unified import UnifiedYOLO, workflows
from yolo_unified.continual import StageContext, build_strategies, stage_samples
from yolo_unified.continual.old_distill import OldDistill, unbiased_seg_distance
from yolo_unified.continual.old_labels import OldLabels, merge_boxes, shift_background
from yolo_unified.continual.replay import oversampling_factor
from yolo_unified.data.class_split import split_classes
from yolo_unified.data.classes import class_map, grown_names, remap_labels
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.defaults import unified_cfg
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.models.unified.val import validate
from yolo_unified.nn.tasks import UnifiedModel, check_class_lists
from yolo_unified.workflows.base import check_keys, stage_memory

OLD = {"det": {0: "person", 1: "car"}, "seg": {0: "background", 1: "person"}, "cls": {0: "person", 1: "car"}}
GROWN = {
    "det": {0: "person", 1: "car", 2: "dog"},
    "seg": {0: "background", 1: "person", 2: "dog", 3: "cat"},
    "cls": {0: "person", 1: "car", 2: "dog"},
}


def test_classes_match_by_name_and_new_ones_are_appended():
    model = {0: "background", 1: "person", 2: "car"}
    data = {0: "background", 1: "dog", 2: "car"}
    assert class_map(model, data, "new.yaml", "seg") == [0, -1, 2]
    assert grown_names(model, data, "new.yaml", "seg") == {**model, 3: "dog"}
    assert class_map(model, {0: "car", 1: "person"}, "x.yaml", "det") == [2, 1]  # a subset in another order


@pytest.mark.parametrize(
    "data, message",
    [({0: "dog", 1: "dog"}, r"new.yaml: 'det:' names 'dog' twice \(ids 0 and 1\)"),
     ({0: "Person"}, r"new.yaml: 'det:' class 0 'Person' is the model's class 0 'person' spelled differently"),
     ({0: "traffic_light"}, r"class 0 'traffic_light' is the model's class 2 'traffic light'")],
)  # fmt: skip
def test_names_that_cannot_be_matched_fail_naming_the_file(data, message):
    """Bad input: a name given twice, or a model class under another spelling."""
    with pytest.raises(ValueError, match=message):
        grown_names({0: "person", 1: "car", 2: "traffic light"}, data, "new.yaml", "det")


def test_a_grown_head_keeps_every_old_weight_bit_identical_and_every_old_output():
    old = UnifiedModel(task_names=OLD, verbose=False).eval()
    grown = UnifiedModel(task_names=GROWN, verbose=False)
    grown.load(old, verbose=False)
    grown.model[-1].copy_class_rows(old.model[-1])
    grown.eval()
    for name, tensor in old.state_dict().items():  # every old weight, the old rows of the projections among them
        rows = grown.state_dict()[name]
        assert torch.equal(tensor, rows[: len(tensor)] if tensor.dim() else rows), name
    img = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        before, after = old(img)[-1], grown(img)[-1]
    assert after["scores"].shape[1] == 3 and after["seg"].shape[1] == 4 and after["cls"].shape[1] == 3
    assert torch.equal(before["boxes"], after["boxes"])
    for name in ("scores", "seg", "cls"):  # a conv with more output rows may sum in another order on one thread
        old_rows = after[name][:, : before[name].shape[1]]
        assert (before[name] - old_rows).abs().max() <= 1e-6 * before[name].abs().max(), name


def test_a_checkpoint_whose_class_list_does_not_match_its_head_is_refused():
    model = UnifiedModel(task_names=OLD, verbose=False)
    model.task_names = {**OLD, "det": GROWN["det"]}
    with pytest.raises(ValueError, match=r"edited.pt: its class lists do not match its head \(det 3 names vs 2"):
        check_class_lists(model, "edited.pt")


def test_labels_are_renumbered_to_the_models_ids():
    lut = torch.tensor([3, -1, 0])  # data 0 -> model 3, data 1: a class the model lacks, data 2 -> model 0
    det = {"img": torch.zeros(2, 3, 8, 8), "cls": torch.tensor([[0.0], [1.0], [2.0]]),
           "bboxes": torch.rand(3, 4), "batch_idx": torch.tensor([0.0, 0.0, 1.0])}  # fmt: skip
    out = remap_labels(det, "det", lut)
    assert out["cls"].view(-1).tolist() == [3, 0] and out["batch_idx"].tolist() == [0, 1]
    assert torch.equal(out["bboxes"], det["bboxes"][[0, 2]])
    mask = torch.tensor([[[0, 1, 2, 255]]], dtype=torch.uint8)
    assert remap_labels({"img": det["img"], "semantic_mask": mask}, "seg", lut)["semantic_mask"].tolist() == [
        [[3, 255, 0, 255]]
    ]
    cls = remap_labels({"img": torch.zeros(3, 3, 8, 8), "cls": torch.tensor([2, 1, 0])}, "cls", lut)
    assert cls["cls"].tolist() == [0, -1, 3] and len(cls["img"]) == 3  # the validator leaves class -1 out


def test_old_class_pseudo_boxes_join_the_labels_and_never_replace_one():
    batch = {"cls": torch.tensor([[2.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
             "batch_idx": torch.tensor([0.0])}  # fmt: skip
    old = {"cls": torch.tensor([[0.0], [1.0], [0.0]]),
           "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]]),
           "batch_idx": torch.tensor([0.0, 0.0, 1.0])}  # fmt: skip
    batch = {k: torch.cat([v, v]) for k, v in batch.items()}  # the same box in image 1
    batch["batch_idx"] = torch.tensor([0.0, 1.0])
    merged, added = merge_boxes(batch, old, iou=0.5)
    # the first old box lies on the data's own box in image 0: left out; the third on the one in image 1: left out
    assert added == 1 and merged["cls"].view(-1).tolist() == [2, 1, 2]
    assert merged["batch_idx"].tolist() == [0, 0, 1]  # grouped by image, as Ultralytics' loss reads them
    assert torch.equal(merged["bboxes"][[0, 2]], batch["bboxes"])  # the data's labels, unchanged


def test_the_background_shift_gives_old_classes_back_only_where_the_new_mask_says_background():
    mask = torch.tensor([[[0, 0, 0, 2, 255, 0]]], dtype=torch.uint8)  # 2 = a new class
    logits = torch.full((1, 2, 1, 6), -5.0)  # old model: background, person
    logits[0, 1, 0, [0, 3, 4]] = 5.0  # confident person at a background pixel, a new-class pixel, an ignored one
    logits[0, 1, 0, 2] = 5.4  # ... and an unsure person
    logits[0, 0, 0, 2] = 5.0
    assert shift_background(mask, logits, conf=0.7).tolist() == [[[1, 0, 0, 2, 255, 0]]]


def test_unbiased_distillation_lets_new_classes_take_the_background():
    teacher = torch.randn(2, 2, 4, 4)  # background, person
    student = torch.cat([teacher, torch.full((2, 2, 4, 4), -30.0)], 1)  # the same, new classes (dog, cat) off
    assert float(unbiased_seg_distance(student, teacher, 2.0)) < 1e-6
    moved = student.clone()  # the new class dog takes half of the background's probability: no forgetting
    moved[:, 0] = moved[:, 2] = teacher[:, 0] - 2.0 * torch.log(torch.tensor(2.0))  # logits / temperature 2
    assert float(unbiased_seg_distance(moved, teacher, 2.0)) < 1e-4
    moved[:, 1] -= 3.0  # less person: forgetting
    assert float(unbiased_seg_distance(moved, teacher, 2.0)) > 1e-2


def grown_context(tmp_path) -> tuple[UnifiedModel, StageContext]:
    """An old model saved as the stage's start, and the context of a stage adding classes to every task."""
    old = UnifiedModel(task_names=OLD, verbose=False)
    ckpt = tmp_path / "old.pt"
    torch.save({"model": old}, ckpt)
    context = StageContext(index=0, task="det", prev_weights=str(ckpt), old_classes={"det": 2, "seg": 2, "cls": 2})
    return old.eval(), context


@pytest.mark.parametrize("task", ["det", "seg", "cls"])
def test_old_class_distillation_is_zero_for_the_grown_model_before_training(task, tmp_path):
    old, context = grown_context(tmp_path)
    grown = UnifiedModel(task_names=GROWN, verbose=False)
    grown.load(old, verbose=False)
    grown.model[-1].copy_class_rows(old.model[-1])
    with torch.no_grad():  # new rows made negligible: the old distributions are the grown model's
        head = grown.model[-1]
        head.seg.bias[2:] = head.cls.bias[2:] = -30.0
    grown.eval()
    img = torch.rand(2, 3, 64, 64)
    labels = {"det": {"bboxes": torch.zeros(0, 4)}, "seg": {"semantic_mask": torch.zeros(2, 64, 64)}, "cls": {}}
    batch = {"img": img, "cls": torch.zeros(2), **labels[task]}
    strategy = OldDistill({"weight": 1.0}, context)
    with torch.no_grad():
        term, parts = strategy.loss(grown, grown(img)[-1], batch)
        assert abs(float(term)) < 1e-5 and set(parts) == {"old_dist"}
        head.det.bias[4 * head.reg_max :][:2] += 1.0  # the old classes' outputs move: forgetting
        head.seg.bias[1] += 1.0
        head.cls.bias[1] += 1.0
        assert float(strategy.loss(grown, grown(img)[-1], batch)[0]) > 1e-3
        others = [t for t in ("det", "seg", "cls") if t != task]  # tasks: the tasks it distils, not this one
        assert OldDistill({"tasks": others}, context).loss(grown, grown(img)[-1], batch) is None


def test_old_labels_add_the_old_models_boxes_to_a_detection_batch(tmp_path):
    old, context = grown_context(tmp_path)
    img = torch.rand(2, 3, 64, 64)
    teacher = context.teacher(img.device)
    with torch.no_grad():
        head = teacher.model[-1]
        head.det.bias[4 * head.reg_max :] = 8.0  # the old model sees old classes everywhere
    batch = {"img": img, "cls": torch.tensor([[2.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]),
             "batch_idx": torch.tensor([0.0])}  # fmt: skip
    strategy = OldLabels({"conf": 0.5}, context)
    merged = strategy.labels(batch)
    added = merged["cls"][1:].view(-1)
    assert len(added) > 0 and set(added.tolist()) <= {0.0, 1.0} and merged["cls"][0].item() == 2.0
    assert float(strategy.loss(teacher, {}, merged)[1]["old_labels"]) == len(added) / 2


TINY = {
    "imgsz": 64,
    "batch": 4,
    "workers": 0,
    "plots": False,
    "warmup_epochs": 0,
    "epochs": 1,
    "val": False,
    "conf": 0.01,
}


@pytest.fixture(scope="module")
def synth_12(tmp_path_factory) -> Path:
    """The built-in synthetic data with 12 train / 8 val images per task: every class in every val split."""
    return make_synthetic(tmp_path_factory.mktemp("data") / "synth12", n_train=12, n_val=8, imgsz=64, seed=1)


@pytest.mark.parametrize("task", ["det", "seg", "cls"])
def test_a_stage_adds_a_class_and_scores_old_and_new_ones(task, synth_12, tmp_path, logged):
    """A model that knows circle and rectangle (a checkpoint made here, untrained: this is about the mechanics) adds
    triangle from data that labels triangles only."""
    first = load_data_config(split_classes(synth_12, task, ["circle", "rectangle"], tmp_path / "first"))
    second = split_classes(synth_12, task, ["triangle"], tmp_path / "second")
    old = UnifiedModel(task_names=task_names(load_data_config(synth_12)) | task_names(first), verbose=False)
    old.task_imgsz = {t: 64 for t in ("det", "seg", "cls")}
    torch.save({"model": old}, tmp_path / "old.pt")
    new = workflows.train(
        task=task, data=str(second), model=str(tmp_path / "old.pt"), project=str(tmp_path), name="new",
        old_labels={"conf": 0.25}, old_distill={"weight": 1.0}, **TINY,
    )  # fmt: skip
    n_old = len(old.task_names[task])
    assert f"{task} had {n_old} classes; " in logged.text and f"adds 1: triangle (ids {n_old}-{n_old})" in logged.text
    model = load_checkpoint(new["weights"])[0]
    assert model.task_names[task] == {**old.task_names[task], n_old: "triangle"}
    assert model.added_classes[task]["old"] == n_old
    assert {"det": model.model[-1].nc, "seg": model.model[-1].nc_seg, "cls": model.model[-1].nc_cls}[task] == n_old + 1
    header = (tmp_path / "new" / "results.csv").read_text().splitlines()[0]
    assert "train/old_dist" in header and ("train/old_labels" in header) == (task != "cls")  # beside the loss
    untrained = {"tasks": [task], "per_class": True, "plots": False, "conf": 0.01}  # NMS of few boxes: quick
    stage1 = validate(str(tmp_path / "old.pt"), synth_12, tmp_path / "val1", batch=1, **untrained)  # lone triangles
    assert "the model lacks the data's classes ['triangle']: their labels are left out" in logged.text
    stage2 = validate(new["weights"], synth_12, tmp_path / "val2", **untrained)
    assert "triangle" not in stage1[task]["per_class"] and "triangle" in stage2[task]["per_class"]
    image = next((tmp_path / "second" / ("cls/val/triangle" if task == "cls" else f"{task}/images/val")).iterdir())
    result = UnifiedYOLO(new["weights"]).predict(str(image), save=False, verbose=False)[0]
    assert result.task_names[task] == model.task_names[task]  # what predict shows: the grown list
    if task == "det":  # training read the subset's own labels (triangle: class 0 of the subset's data)
        cache = load_dataset_cache_file(tmp_path / "second/det/labels/train.cache")
        assert {int(c) for label in cache["labels"] for c in label["cls"].ravel()} == {0}


def test_the_recipe_builds_its_strategies():
    cfg = yaml.safe_load((REPO / "cfg/add-classes.yaml").read_text())
    check_keys(cfg)
    args = SimpleNamespace(**{**unified_cfg(), **cfg})
    built = build_strategies(args, StageContext(index=0, task="det"))
    assert sorted(s.key for s in built) == sorted(["clip_grad", *cfg])


def test_keeping_old_classes_of_a_task_the_model_never_learned_fails(synth_12, tmp_path):
    model = UnifiedModel(task_names=task_names(load_data_config(synth_12)), verbose=False)
    model.task_imgsz = {"seg": 64}  # a model that learned segmentation only
    torch.save({"model": model}, tmp_path / "seg.pt")
    with pytest.raises(ValueError, match=rf"old_labels keep .* model={tmp_path / 'seg.pt'} has not learned det: "):
        workflows.train(task="det", data=str(synth_12), model=str(tmp_path / "seg.pt"), old_labels={"conf": 0.3},
                        project=str(tmp_path), **TINY)  # fmt: skip


def test_stored_samples_of_a_stage_adding_classes_use_the_models_ids(synth_12, tmp_path):
    """EWC's and replay's samples (`stage_samples`) carry the labels the stage trains on: triangle is class 2."""
    old = UnifiedModel(task_names={"det": {0: "circle", 1: "rectangle"}}, verbose=False)
    old.task_imgsz = {"det": 64}
    torch.save({"model": old}, tmp_path / "old.pt")
    second = split_classes(synth_12, "det", ["triangle"], tmp_path / "second")
    keys = {"data": str(second), "model": str(tmp_path / "old.pt"), "save_dir": str(tmp_path / "run"), **TINY}
    trainer = TRAINERS["det"](overrides=keys)
    trainer.setup_model()
    labels = torch.cat([b["cls"] for b in stage_samples(trainer, 3)])
    assert len(labels) and set(labels.view(-1).tolist()) == {2.0}


@pytest.mark.parametrize("oversample", [False, True])
def test_mixed_exemplars_join_the_training_set_in_the_models_ids(synth_12, tmp_path, oversample):
    """replay mix: the stored images of the old classes are trained on in the stage's own batches, labelled with their
    classes (circle 0, rectangle 1) beside the new triangles (2), and no separate replay loss is drawn; oversample
    draws each of them as many times as gives an old class about as many images as the new one."""
    old = UnifiedModel(task_names={"cls": {0: "circle", 1: "rectangle"}}, verbose=False)
    old.task_imgsz = {"cls": 64}
    torch.save({"model": old}, tmp_path / "old.pt")
    second = split_classes(synth_12, "cls", ["triangle"], tmp_path / "second")
    stored = [{"img": torch.rand(1, 3, 64, 64), "cls": torch.tensor([i % 2])} for i in range(5)]
    context = StageContext(index=0, task="cls", memory={"replay": {"cls": stored}})
    keys = {"data": str(second), "model": str(tmp_path / "old.pt"), "save_dir": str(tmp_path / "run"), **TINY}
    replay_cfg = {"size": 5, "mix": True, "oversample": oversample}
    trainer = TRAINERS["cls"](overrides={**keys, "replay": replay_cfg}, context=context)
    trainer.setup_model()
    earlier = tmp_path / "run" / "replay" / "0000-0.png"  # an earlier run's file of the same name is replaced
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"not this image")
    loader = trainer.get_dataloader(trainer.data["train"], batch_size=4, rank=-1, mode="train")
    labels = torch.cat([trainer.preprocess_batch(b)["cls"] for b in loader]).tolist()
    n_new = len(list((tmp_path / "second" / "cls" / "train").rglob("*.jpg")))
    times = round(n_new / 2.5) if oversample else 1  # 5 stored images of 2 classes, n_new triangles
    assert times == (2 if oversample else 1)  # the fixture's 4 triangles
    assert sorted(labels) == [0] * 3 * times + [1] * 2 * times + [2] * n_new
    assert len(list((tmp_path / "run" / "replay").glob("*.png"))) == 5
    written = torch.from_numpy(cv2.cvtColor(cv2.imread(str(earlier)), cv2.COLOR_BGR2RGB)).permute(2, 0, 1) / 255
    assert (written - stored[0]["img"][0]).abs().max() <= 0.5 / 255 + 1e-6
    replay = next(s for s in trainer.strategies if s.key == "replay")
    replay.setup(trainer)
    assert replay.buffers == {}  # mixed into the data: no replay loss term


def test_replay_tasks_leaves_the_other_tasks_stored_images_alone():
    """replay {tasks: [cls]} in a stage adding detection classes: the stored boxes are neither replayed nor missed."""
    box = {"img": torch.rand(1, 3, 32, 32), "cls": torch.zeros(1, 1), "bboxes": torch.rand(1, 4)}
    box["batch_idx"] = torch.zeros(1)
    context = StageContext(index=0, task="det", memory={"replay": {"det": [box]}}, old_classes={"det": 2})
    trainer = SimpleNamespace(device=torch.device("cpu"), args=SimpleNamespace(seed=0, model="old.pt"))
    replays = {}
    for tasks in (["cls"], ["det", "cls"]):
        (replay,) = build_strategies(SimpleNamespace(replay={"size": 1, "tasks": tasks}), context)
        replay.setup(trainer)
        replays[tasks[0]] = (replay.keeps_old_classes_of("det"), list(replay.buffers))
    assert replays == {"cls": (False, []), "det": (True, ["det"])}


def test_oversampling_factor_evens_old_and_new_classes():
    """Stored images are repeated up to a new class's share of the training set, never fewer than once."""
    stored = [{"cls": torch.tensor([i % 2])} for i in range(20)]  # 10 per old class
    assert oversampling_factor([["f", 2]] * 32, stored) == 3  # 32 images of one new class
    assert oversampling_factor([["f", 2]] * 32 + [["f", 3]] * 32, stored) == 3
    assert oversampling_factor([["f", 2]] * 4, stored) == 1
    assert oversampling_factor([["f", 2]] * 100, stored[:1]) == 100  # 1 stored image of 1 class


def test_val_names_classification_classes_by_the_data_yaml_not_by_folder(synth_12, tmp_path):
    """Imagenette's layout: class folders named by WordNet id, the data YAML gives the readable names."""
    cfg = yaml.safe_load(Path(synth_12).read_text())
    root, names = Path(synth_12).parent / cfg["path"], cfg["cls"]["names"]
    for split in ("train", "val"):
        for i, name in names.items():  # n0, n1, ... sort as the names do
            shutil.copytree(root / "cls" / split / name, tmp_path / "cls" / split / f"n{i}")
    cfg.update(path=str(root))
    cfg["cls"].update(train=str(tmp_path / "cls/train"), val=str(tmp_path / "cls/val"))
    (tmp_path / "wnid.yaml").write_text(yaml.safe_dump(cfg))
    model = UnifiedModel(task_names=task_names(load_data_config(synth_12)), verbose=False)
    model.task_imgsz = {"cls": 64}
    torch.save({"model": model}, tmp_path / "m.pt")
    scores = validate(str(tmp_path / "m.pt"), tmp_path / "wnid.yaml", tmp_path / "val", tasks=["cls"], per_class=True)
    assert sorted(scores["cls"]["per_class"]) == sorted(names.values())
    shutil.rmtree(tmp_path / "cls" / "train" / "n2")  # Ultralytics numbers the classes by the train folder's
    with pytest.raises(ValueError, match="wnid.yaml: cls names 3 classes, its 'train' folder .* has 2"):
        validate(str(tmp_path / "m.pt"), tmp_path / "wnid.yaml", tmp_path / "val2", tasks=["cls"])


def test_exemplars_the_first_run_keeps_are_replayed_when_classes_are_added(synth_12, tmp_path, logged):
    """Stage 1 with replay= keeps images in its best.pt; a stage adding classes replays them and adds its own."""
    first = split_classes(synth_12, "cls", ["circle", "rectangle"], tmp_path / "first")
    second = split_classes(synth_12, "cls", ["triangle"], tmp_path / "second")
    run = {"task": "cls", "project": str(tmp_path), **TINY}
    old = workflows.train(data=str(first), replay={"size": 4}, name="old", **run)
    kept = stage_memory(old["weights"])["replay"]["cls"]
    assert len(kept) == 4 and {int(s["cls"]) for s in kept} <= {0, 1}
    keys = {"replay": {"size": 4, "batch": 2}, "old_labels": {"conf": 0.3}}
    new = workflows.train(data=str(second), model=old["weights"], name="new", **keys, **run)
    assert "old classes kept by replay" in logged.text  # the run says what keeps them (old_labels: not for cls)
    assert "train/replay" in (tmp_path / "new" / "results.csv").read_text().splitlines()[0]
    memory = stage_memory(new["weights"])["replay"]["cls"]
    assert all(torch.equal(a["img"], b["img"]) for a, b in zip(memory[:4], kept, strict=True))  # old exemplars, then
    assert len(memory) == 8 and {int(s["cls"]) for s in memory[4:]} == {2}  # triangles in the model's id
