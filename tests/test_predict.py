"""Prediction with .pt and .onnx models: results, annotated files, video, and the same letterbox as val and export."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_export import varied_checkpoint
from ultralytics.utils import ASSETS, YAML

from yolo_unified import UnifiedYOLO
from yolo_unified.cli import run
from yolo_unified.data.config import load_data_config, task_data
from yolo_unified.models.unified.predict import UnifiedResults
from yolo_unified.models.unified.val import UnifiedDetectionValidator

IMGSZ = 64
CONF = 1e-3  # the varied-output checkpoint: dozens of anchors score above it on each photo


@pytest.fixture(scope="module")
def models(synth_yaml, tmp_path_factory) -> dict[str, str]:
    """A checkpoint with varied outputs (see test_export), its ONNX export, and one with the seg argmax in the graph."""
    pt = varied_checkpoint(synth_yaml, tmp_path_factory.mktemp("runs"))
    argmax = Path(UnifiedYOLO(pt).export(format="onnx", seg_argmax=True))
    argmax = argmax.rename(argmax.with_name("best-argmax.onnx"))
    return {"pt": str(pt), "onnx": UnifiedYOLO(pt).export(format="onnx"), "onnx-argmax": str(argmax)}


@pytest.fixture(scope="module")
def photos(synth_yaml, tmp_path_factory) -> Path:
    """A one-task data YAML whose det val split holds two non-square photos (Ultralytics' bus, a cropped zidane).

    The zidane crop (1000x610) letterboxes to 64x40 at imgsz 64, where rounding and Ultralytics' dataset loader differ.
    """
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    crops = {"bus.jpg": np.s_[:, :], "zidane.jpg": np.s_[:610, :1000]}
    for name, crop in crops.items():
        cv2.imwrite(str(root / "images" / name), cv2.imread(str(ASSETS / name))[crop])
        (root / "labels" / name).with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
    names = load_data_config(synth_yaml)["tasks"]["det"]["names"]
    YAML.save(root / "data.yaml", {"path": str(root), "det": {"names": names, "train": "images", "val": "images"}})
    return root


def test_results_carry_boxes_semantic_map_and_probs(models, photos):
    for model in models.values():
        results = UnifiedYOLO(model)(str(photos / "images"), imgsz=IMGSZ, conf=CONF)
        assert len(results) == 2
        for r in results:
            assert isinstance(r, UnifiedResults) and set(r.task_names) == {"seg", "det", "cls"}
            h, w = r.orig_shape
            assert len(r.boxes) > 0 and r.boxes.conf.min() >= CONF
            xyxy = r.boxes.xyxy
            assert xyxy.min() >= 0 and (xyxy[:, [0, 2]] <= w).all() and (xyxy[:, [1, 3]] <= h).all()
            assert tuple(r.semantic_mask.data.shape) == (h, w)
            assert int(r.semantic_mask.data.max()) < len(r.task_names["seg"])
            assert len(r.probs.data) == len(r.task_names["cls"])
            assert torch.isclose(r.probs.data.sum(), torch.tensor(1.0))
            assert "cls " in r.verbose() and "seg " in r.verbose()
            assert [d["name"] for d in r.summary()] == [r.names[int(c)] for c in r.boxes.cls]  # detection rows


@pytest.mark.parametrize("export", ["onnx", "onnx-argmax"])
def test_pt_and_onnx_predictions_agree(models, photos, export):
    pt, ox = (UnifiedYOLO(models[m])(str(photos / "images"), imgsz=IMGSZ, conf=CONF) for m in ("pt", export))
    for a, b in zip(pt, ox, strict=True):
        assert (a.semantic_mask.data == b.semantic_mask.data).float().mean() > 0.999  # logits or class map alike
        torch.testing.assert_close(a.probs.data, b.probs.data, atol=1e-3, rtol=0)
        px = 1e-2 * max(a.orig_shape) / IMGSZ  # 1e-2 px at the model input, in original-image pixels
        best_a, best_b = a.boxes.data[a.boxes.conf.argmax()], b.boxes.data[b.boxes.conf.argmax()]
        torch.testing.assert_close(best_a[:4], best_b[:4], atol=px, rtol=0)
        torch.testing.assert_close(best_a[4:], best_b[4:], atol=1e-3, rtol=0)


def test_cli_predict_saves_annotated_images(models, photos, tmp_path):
    for fmt, model in models.items():
        save_dir = run(["predict", f"model={model}", f"source={photos / 'images'}", f"imgsz={IMGSZ}", f"conf={CONF}",
                        "save_txt=True", f"project={tmp_path}", f"name={fmt}"])  # fmt: skip
        for source in (photos / "images").iterdir():
            original, annotated = cv2.imread(str(source)), cv2.imread(str(save_dir / source.name))
            assert annotated.shape == original.shape
            changed = np.abs(annotated.astype(int) - original.astype(int)).max(axis=2) > 30
            assert changed.mean() > 0.03, f"{fmt}: {source.name} looks unannotated"  # boxes, labels, non-background
            boxes = (save_dir / "labels" / source.name).with_suffix(".txt").read_text().splitlines()
            assert boxes and all(len(line.split()) == 5 for line in boxes)  # YOLO format: class x y w h


def test_overlay_leaves_the_background_untinted(models, photos):
    """Background pixels (seg class 0) of the annotated image are the input's; other classes are tinted."""
    r = UnifiedYOLO(models["pt"])(str(photos / "images" / "bus.jpg"), imgsz=IMGSZ, conf=CONF)[0]
    h, w = r.orig_shape
    mask = torch.zeros((h, w), dtype=torch.uint8)
    mask[:, w // 2 :] = 1  # right half: the first object class; left half: background
    plotted = UnifiedResults(r.orig_img, r.path, r.task_names, semantic_mask=mask).plot()
    top_left = np.s_[: h // 2, : w // 2]  # background, above the legend (bottom left)
    assert np.array_equal(plotted[top_left], r.orig_img[top_left])
    assert (plotted[:, w // 2 :] != r.orig_img[:, w // 2 :]).any(axis=2).mean() > 0.9


def test_an_empty_image_file_fails_with_its_name(models, tmp_path):
    """An empty .jpg given as a file, in a list or in a folder: one error naming it, not a missing HEIF plugin."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for source in (str(empty), [str(empty)], tmp_path):
        with pytest.raises(ValueError, match=re.escape(f"{empty} is an empty file, not an image")):
            UnifiedYOLO(models["pt"]).predict(source, imgsz=IMGSZ)


def test_video_source_writes_an_annotated_video(models, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(3):
        writer.write(np.full((64, 96, 3), 60 * i, np.uint8))
    writer.release()
    save_dir = run(["predict", f"model={models['pt']}", f"source={video}", f"imgsz={IMGSZ}", f"project={tmp_path}"])
    out = cv2.VideoCapture(str(save_dir / "clip.avi"))
    assert out.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and out.get(cv2.CAP_PROP_FRAME_WIDTH) == 96


def test_val_predict_and_export_see_the_same_pixels(models, photos, tmp_path):
    """The validator's letterboxed batch, and what the .pt and .onnx predictors feed their models, are identical."""
    data = str(photos / "data.yaml")
    validator = UnifiedDetectionValidator(args={"data": data, "imgsz": IMGSZ, "batch": 1, "workers": 0})
    validator.data, validator.stride = task_data(load_data_config(data), "det", splits=("val",)), 32
    validator.device = torch.device("cpu")  # what BaseValidator.__call__ sets up before loading batches
    for batch in validator.get_dataloader(validator.data["val"], 1):
        batch = validator.preprocess(batch)
        file = batch["im_file"][0]
        for model in models.values():
            yolo = UnifiedYOLO(model)
            yolo.predict(file, imgsz=IMGSZ)
            x = yolo.predictor.preprocess([cv2.imread(file)])
            assert torch.equal(x, batch["img"]), f"{Path(file).name}: {Path(model).suffix} input differs from val"
            (gain, pad), (val_gain, val_pad) = yolo.predictor.ratio_pads[0], batch["ratio_pad"][0]
            assert np.allclose(gain, val_gain) and tuple(pad) == tuple(val_pad)
