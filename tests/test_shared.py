"""Tasks labelled on the same images: the data YAML's shared form, partial labels, one pass per image."""

import csv
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.utils import YAML

from yolo_unified import workflows
from yolo_unified.data.config import load_data_config, task_data, task_names
from yolo_unified.data.shared import SharedDataset, same_labels, task_views
from yolo_unified.data.synthetic import CLS_NAMES, DET_NAMES, SEG_NAMES, shared_sample
from yolo_unified.models.unified.joint import JointTrainer, task_losses
from yolo_unified.models.unified.val import validate
from yolo_unified.nn import UnifiedModel

SIZE = 64


def no_mask(i: int) -> bool:
    """Training images 1, 4, 7, ...: boxes only."""
    return i % 3 == 1


def no_boxes(i: int) -> bool:
    """Training images 2, 5, 8, ...: a mask only."""
    return i % 3 == 2


def write_shared(root: Path, n_train: int = 12, n_val: int = 4) -> None:
    """Shapes with boxes and masks on the same images; in train, a third of the images lack their mask and a third
    their box file (partial labels); every val image has both."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img, boxes, mask = shared_sample(rng, SIZE)
            for folder in ("images", "labels", "masks"):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
            if split == "val" or not no_boxes(i):
                (root / "labels" / split / f"{i:03d}.txt").write_text(boxes)
            if split == "val" or not no_mask(i):
                cv2.imwrite(str(root / "masks" / split / f"{i:03d}.png"), mask)


@pytest.fixture(scope="module")
def shared_yaml(tmp_path_factory, synth_yaml) -> str:
    """Detection and segmentation on shared images, plus the synthetic classification set as a dataset of its own."""
    root = tmp_path_factory.mktemp("shared")
    write_shared(root / "data")
    synth = load_data_config(synth_yaml)["tasks"]["cls"]
    d = {
        "path": "data",
        "train": "images/train",
        "val": "images/val",
        "det": {"names": dict(enumerate(DET_NAMES))},
        "seg": {"names": dict(enumerate(SEG_NAMES)), "masks_dir": "masks"},
        "cls": {"train": synth["train"], "val": synth["val"], "names": dict(enumerate(CLS_NAMES))},
    }
    YAML.save(root / "shared.yaml", d)
    return str(root / "shared.yaml")


def lines(file: str) -> list[str]:
    return [Path(x).name for x in Path(file).read_text().splitlines()]


def test_each_task_reads_the_images_that_have_its_label(shared_yaml):
    cfg = load_data_config(shared_yaml)
    assert cfg["tasks"]["det"]["shared"] and cfg["tasks"]["seg"]["shared"] and "shared" not in cfg["tasks"]["cls"]
    det, seg = task_data(cfg, "det"), task_data(cfg, "seg")
    assert lines(det["train"]) == [f"{i:03d}.png" for i in range(12) if not no_boxes(i)]
    assert lines(seg["train"]) == [f"{i:03d}.png" for i in range(12) if not no_mask(i)]
    assert len(lines(det["val"])) == len(lines(seg["val"])) == 4
    assert task_data(cfg, "cls")["train"] == cfg["tasks"]["cls"]["train"]  # its own class folders


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda r, d: cv2.imwrite(str(r / "masks/train/999.png"), np.zeros((4, 4), np.uint8)), "999.png"),
        (lambda r, d: (r / "labels/val/999.txt").write_text(""), "999.txt"),
        (lambda r, d: [f.unlink() for f in (r / "labels/train").glob("*.txt")], "'det:' has no labelled image"),
        (lambda r, d: d["cls"].pop("train") and d["cls"].pop("val"), "cannot use the shared images"),
    ],
    ids=["mask-without-image", "label-without-image", "task-without-labels", "cls-without-folders"],
)
def test_bad_shared_data_fails_naming_the_file(tmp_path, break_it, message):
    write_shared(tmp_path / "data", n_train=6, n_val=3)
    d = {"path": "data", "train": "images/train", "val": "images/val", "det": {"names": {0: "a", 1: "b", 2: "c"}}}
    d["seg"] = {"names": dict(enumerate(SEG_NAMES)), "masks_dir": "masks"}
    d["cls"] = {"train": "c/train", "val": "c/val", "names": {0: "a"}}
    break_it(tmp_path / "data", d)
    YAML.save(tmp_path / "d.yaml", d)
    with pytest.raises(ValueError, match=message):
        cfg = load_data_config(tmp_path / "d.yaml")
        for task in ("det", "seg"):
            task_data(cfg, task)


def shared_dataset(shared_yaml: str, **hyp) -> SharedDataset:
    cfg = load_data_config(shared_yaml)
    data = {**task_data(cfg, "det"), "masks_dir": "masks", "tasks": ["seg", "det"]}
    data["train"] = cfg["shared"]["train"]
    args = get_cfg(overrides={"imgsz": SIZE, **hyp})
    return SharedDataset(img_path=data["train"], imgsz=SIZE, augment=True, hyp=args, data=data, batch_size=4)


def test_every_image_says_which_labels_it_has(shared_yaml):
    dataset = shared_dataset(shared_yaml, mosaic=0.0)
    expected = [("seg", "det"), ("det",), ("seg",)] * 4
    assert dataset.sample_tasks == expected
    sample = dataset[1]  # boxes, no mask: all ignore
    assert sample["tasks"] == ("det",) and len(sample["cls"]) > 0 and (sample["semantic_mask"] == 255).all()
    sample = dataset[2]  # a mask, no box file: no boxes
    assert sample["tasks"] == ("seg",) and len(sample["cls"]) == 0 and (sample["semantic_mask"] < 255).any()


def test_mosaic_mixes_only_images_with_the_same_labels(shared_yaml):
    dataset = shared_dataset(shared_yaml, mosaic=1.0)
    mosaic = same_labels(dataset.transforms.transforms[0].transforms[0])
    for label_set in dataset.by_tasks:
        mosaic._tasks = label_set
        for _ in range(5):
            assert {dataset.sample_tasks[i] for i in mosaic.get_indexes()} == {label_set}
    assert all(dataset[i]["tasks"] == dataset.sample_tasks[i] for i in range(6))


def test_augmentation_keeps_boxes_and_masks_aligned(shared_yaml):
    """Mosaic, scale, translation, flips and letterbox move an image's boxes and mask alike: the boxes hold their
    class's pixels, and the class pixels lie in boxes of their class (but for shapes whose box the augmentation
    dropped, cut to a sliver at the mosaic's edge)."""
    random.seed(0)  # Ultralytics' augmentation draws from `random`
    dataset = shared_dataset(shared_yaml, mosaic=1.0, scale=0.5, translate=0.2, fliplr=0.5, flipud=0.5)
    boxes, boxes_with_their_class, box_class_pixels, box_pixels, in_boxes, class_pixels = 0, 0, 0, 0, 0, 0
    for _ in range(3):
        for i in dataset.by_tasks[("seg", "det")]:
            sample = dataset[i]
            mask = sample["semantic_mask"].numpy()
            h, w = mask.shape
            inside = np.zeros((len(SEG_NAMES), h, w), bool)
            for c, (cx, cy, bw, bh) in zip(
                sample["cls"].flatten().int().tolist(), sample["bboxes"].tolist(), strict=True
            ):
                x1, y1, x2, y2 = (
                    round(v) for v in ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                )
                box = mask[y1:y2, x1:x2]
                boxes += 1
                boxes_with_their_class += bool((box == c + 1).any())
                box_class_pixels += int((box == c + 1).sum())
                box_pixels += int((box != 255).sum())
                inside[c + 1, max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
            for k in range(1, len(SEG_NAMES)):
                in_boxes += int(inside[k][mask == k].sum())
                class_pixels += int((mask == k).sum())
    assert boxes > 20 and boxes_with_their_class / boxes > 0.95 and box_class_pixels / box_pixels > 0.5
    assert in_boxes / class_pixels > 0.95


def test_task_views_keep_each_tasks_labelled_images():
    batch = {
        "img": torch.rand(3, 3, 8, 8),
        "tasks": (("seg", "det"), ("seg",), ("det",)),
        "bboxes": torch.rand(4, 4),
        "cls": torch.tensor([[0.0], [1.0], [2.0], [1.0]]),
        "batch_idx": torch.tensor([0.0, 0.0, 2.0, 2.0]),
        "semantic_mask": torch.arange(3).view(3, 1, 1).expand(3, 8, 8),
        "im_file": ("a", "b", "c"),
    }
    views = task_views(batch)
    det_index, det = views["det"]
    assert det_index.tolist() == [0, 2] and det["batch_idx"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.equal(det["img"], batch["img"][[0, 2]]) and det["im_file"] == ["a", "c"]
    assert "semantic_mask" not in det and torch.equal(det["cls"], batch["cls"])
    seg_index, seg = views["seg"]
    assert seg_index.tolist() == [0, 1] and seg["semantic_mask"][:, 0, 0].tolist() == [0, 1]
    assert "bboxes" not in seg and "tasks" not in seg
    assert set(task_views({**batch, "tasks": (("seg",),) * 3})) == {"seg"}


def test_an_image_without_a_tasks_label_adds_nothing_to_that_task(shared_yaml):
    """A batch of four images, detection labelled on two: the detection loss is the loss of those two alone, and
    the unlabelled images get no gradient from it; segmentation likewise."""
    model = UnifiedModel(task_names=task_names(load_data_config(shared_yaml)), verbose=False).eval()  # BN: fixed
    torch.manual_seed(0)
    img = torch.rand(4, 3, SIZE, SIZE, requires_grad=True)
    masks = torch.randint(0, len(SEG_NAMES), (4, SIZE, SIZE), dtype=torch.int32)
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2], [0.6, 0.4, 0.3, 0.5]])
    batch = {
        "img": img,
        "tasks": (("seg", "det"), ("seg",), ("det",), ()),
        "bboxes": boxes,
        "cls": torch.tensor([[0.0], [1.0], [2.0]]),
        "batch_idx": torch.tensor([0.0, 0.0, 2.0]),
        "semantic_mask": masks,
    }
    losses, items = task_losses(model, {"seg+det": [batch]}, ["seg", "det", "cls"])
    assert set(items) == {"seg", "det"} and losses["cls"] == 0
    alone = {"img": img[[0, 2]], "bboxes": boxes, "cls": batch["cls"], "batch_idx": torch.tensor([0.0, 0.0, 1.0])}
    assert torch.allclose(losses["det"], model.loss(alone)[0].sum() / 2, rtol=1e-5)
    seg_alone = {"img": img[[0, 1]], "semantic_mask": masks[[0, 1]]}
    assert torch.allclose(losses["seg"], model.loss(seg_alone)[0].sum() / 2, rtol=1e-5)
    for task, unlabelled in (("det", [1, 3]), ("seg", [2, 3])):
        (grad,) = torch.autograd.grad(losses[task], img, retain_graph=True)
        assert not grad[unlabelled].any() and grad[[i for i in range(4) if i not in unlabelled]].abs().sum() > 0


def test_symlinked_image_folders_train(tmp_path):
    """Image folders that are links to folders elsewhere: the image lists keep the links' paths, beside which the
    labels are (their targets' folder has none)."""
    write_shared(tmp_path / "elsewhere", n_train=4, n_val=2)
    root = tmp_path / "data"
    root.mkdir()
    for folder in ("labels", "masks"):  # the labels sit beside the link, not beside its target
        (tmp_path / "elsewhere" / folder).rename(root / folder)
    (root / "images").symlink_to(tmp_path / "elsewhere" / "images", target_is_directory=True)
    d = {"path": "data", "train": "images/train", "val": "images/val", "det": {"names": dict(enumerate(DET_NAMES))}}
    YAML.save(tmp_path / "linked.yaml", d)
    args = {"epochs": 1, "imgsz": SIZE, "batch": 2, "workers": 0, "plots": False, "project": str(tmp_path)}
    out = workflows.train(task="det", data=str(tmp_path / "linked.yaml"), name="det", **args)
    assert Path(out["weights"]).is_file()
    listed = (root / "train-det.txt").read_text().split()
    assert listed and all(line.startswith(str(root / "images" / "train")) for line in listed)


def test_joint_run_on_shared_images_plus_a_classification_set(shared_yaml, tmp_path):
    """det and seg train as one stream (each image once), cls as its own; each task validates on its own labelled
    images."""
    args = {"epochs": 1, "imgsz": SIZE, "batch": 4, "nbs": 4, "workers": 0, "plots": False, "warmup_epochs": 0}
    args["task_share"] = {"det": 0.5}  # as cfg/joint.yaml has it: the shared stream takes the larger share
    trainer = JointTrainer(overrides={"data": shared_yaml, "joint": True, "save_dir": str(tmp_path / "j"), **args})
    seen = []
    trainer.add_callback("on_train_batch_start", lambda t: seen.append(t))
    trainer.train()
    assert list(trainer.streams) == ["seg+det", "cls"] and trainer.shares == {"seg+det": 1.0, "cls": 1.0}
    assert len(trainer.train_loader.loaders["seg+det"].dataset) == 12  # every labelled image once
    assert len(trainer.parts["det"].test_loader.dataset) == len(trainer.parts["seg"].test_loader.dataset) == 4
    with open(tmp_path / "j/results.csv") as f:
        row = next(csv.DictReader(f))
    for key in (
        "train/det/box_loss",
        "train/seg/ce_loss",
        "train/cls/loss",
        "metrics/seg/mIoU",
        "metrics/det/mAP50(B)",
    ):
        assert float(row[key]) >= 0 and np.isfinite(float(row[key])), key
    assert float(row["train/det/box_loss"]) > 0 and float(row["train/seg/ce_loss"]) > 0 and len(seen) == 3
    scores = validate(str(tmp_path / "j/weights/best.pt"), shared_yaml, tmp_path / "val", imgsz=SIZE, plots=False)
    assert set(scores) == {"seg", "det", "cls"}  # `val` reads the shared form, each task on its labelled images
