"""Export round trips: ONNX and TorchScript outputs match PyTorch on real images; metadata; an ONNX model validates."""

import ast
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from ultralytics.nn.autobackend import AutoBackend

from yolo_unified import UnifiedYOLO, engine, export
from yolo_unified.cli import run
from yolo_unified.data.config import load_data_config
from yolo_unified.models.unified.predict import letterbox
from yolo_unified.nn.modules import upsample_logits

IMGSZ = 64
BOX_PX, TOL = 1e-2, 1e-3  # parity: decoded boxes in pixels, everything else (scores, seg logits, class probabilities)


def images(synth_yaml: str, shape: tuple[int, int], split: str = "val", per_task: int = 1) -> torch.Tensor:
    """Real images of every task of the synthetic dataset, letterboxed to `shape` as predict does."""
    cfg = load_data_config(synth_yaml)
    files = [f for t in ("det", "seg", "cls") for f in sorted(Path(cfg["tasks"][t][split]).rglob("*.jpg"))[:per_task]]
    boxed = [letterbox(cv2.imread(str(f)), list(shape))[0][..., ::-1].transpose(2, 0, 1).copy() for f in files]
    return torch.from_numpy(np.stack(boxed)).float() / 255


def varied_checkpoint(synth_yaml: str, project: Path) -> str:
    """A checkpoint as the trainer writes it (one epoch), then given varied outputs without more training.

    An untrained network's activations fade to almost nothing, where outputs are the biases and any parity holds
    trivially: batch-norm statistics are set from real images and the output projections drawn at random, so boxes,
    scores, seg maps and classes vary from anchor to anchor and image to image.
    """
    out = engine.train(task="det", data=synth_yaml, epochs=1, imgsz=IMGSZ, batch=8, workers=0, plots=False,
                       val=False, project=str(project))  # fmt: skip
    ckpt = torch.load(out["weights"], weights_only=False)
    model = ckpt["model"].float()  # the EMA weights: a final checkpoint keeps them here (Ultralytics strip_optimizer)
    torch.manual_seed(0)
    for layer in (model.model[-1].det, model.model[-1].seg, model.model[-1].cls):
        torch.nn.init.normal_(layer.weight, std=0.1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum, bn.num_batches_tracked = None, torch.zeros_like(bn.num_batches_tracked)  # one pass sets them
    with torch.no_grad():
        model.train()(images(synth_yaml, (IMGSZ, IMGSZ), "train", per_task=8))
    ckpt["model"] = model.eval().half()
    torch.save(ckpt, out["weights"])
    return out["weights"]


@pytest.fixture(scope="module")
def weights(synth_yaml, tmp_path_factory) -> str:
    """The varied-output checkpoint, shared by this module's tests."""
    return varied_checkpoint(synth_yaml, tmp_path_factory.mktemp("runs"))


@pytest.fixture
def model_file(weights, tmp_path) -> str:
    """A private copy of the checkpoint: exports are written next to it."""
    return shutil.copy(weights, tmp_path / "best.pt")


def assert_outputs_match(ref: list[torch.Tensor], out: list[torch.Tensor]) -> dict[str, float]:
    """Check the exported outputs against PyTorch's; return the largest errors."""
    (det, seg, cls), (det_x, seg_x, cls_x) = ref[:3], out
    errors = {
        "boxes_px": (det[:, :4] - det_x[:, :4]).abs().max().item(),
        "scores": (det[:, 4:] - det_x[:, 4:]).abs().max().item(),
        "seg": (seg - seg_x).abs().max().item(),
        "cls": (cls - cls_x).abs().max().item(),
    }
    assert errors["boxes_px"] <= BOX_PX, errors
    assert max(errors["scores"], errors["seg"], errors["cls"]) <= TOL, errors
    return errors


@pytest.mark.parametrize(
    "fmt, dynamic, shape",
    [("onnx", False, (IMGSZ, IMGSZ)), ("onnx", True, (96, 64)), ("torchscript", False, (IMGSZ, IMGSZ))],
)
def test_export_matches_pytorch_on_real_images(model_file, synth_yaml, fmt, dynamic, shape):
    file = UnifiedYOLO(model_file).export(format=fmt, imgsz=IMGSZ, dynamic=dynamic)
    assert Path(file).suffix == f".{fmt}"
    x = images(synth_yaml, shape)  # batch 3; a dynamic ONNX model also takes another input size
    with torch.inference_mode():
        ref = AutoBackend(model_file, verbose=False)(x)
        out = AutoBackend(file, verbose=False)(x)
    assert [tuple(t.shape) for t in out] == [tuple(t.shape) for t in ref[:3]]
    assert_outputs_match(ref, out)


def test_onnx_graph_names_axes_and_metadata(model_file):
    model = UnifiedYOLO(model_file).model
    graph = onnx.load(UnifiedYOLO(model_file).export(format="onnx", imgsz=IMGSZ, dynamic=True))
    assert [o.name for o in graph.graph.output] == ["det", "seg", "cls"]
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert dims["det"][0] == dims["seg"][0] == dims["cls"][0] == "batch"
    assert dims["det"][2] == "anchors" and dims["seg"][2:] == ["height", "width"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["task"] == "unified" and ast.literal_eval(meta["imgsz"]) == [IMGSZ, IMGSZ]
    assert ast.literal_eval(meta["task_names"]) == model.task_names
    assert ast.literal_eval(meta["names"]) == model.task_names["det"]
    assert ast.literal_eval(meta["strides"]) == [8, 16, 32]


def test_seg_argmax_baked_into_the_graph(model_file, synth_yaml):
    file = UnifiedYOLO(model_file).export(format="onnx", imgsz=IMGSZ, seg_argmax=True)
    x = images(synth_yaml, (IMGSZ, IMGSZ))
    with torch.inference_mode():
        logits = AutoBackend(model_file, verbose=False)(x)[1]
        class_map = AutoBackend(file, verbose=False)(x)[1]
    assert class_map.shape == (len(x), IMGSZ, IMGSZ) and not class_map.is_floating_point()
    expected = upsample_logits(logits, (IMGSZ, IMGSZ)).argmax(1)  # what the predictor and validator compute
    assert (class_map == expected).float().mean() > 0.999  # exact but for float ties


def test_onnx_model_validates_like_the_checkpoint(model_file, synth_yaml, tmp_path):
    onnx_file = UnifiedYOLO(model_file).export(format="onnx", imgsz=IMGSZ)
    common = dict(data=synth_yaml, imgsz=IMGSZ, plots=False, project=str(tmp_path))
    pt = engine.val(model=model_file, batch=4, name="pt", **common)
    ox = run(["val", f"model={onnx_file}", *(f"{k}={v}" for k, v in common.items()), "name=onnx"])
    assert set(ox) == set(pt) == {"seg", "det", "cls"}
    for task, metrics in pt.items():
        for key, value in metrics.items():
            assert abs(ox[task][key] - value) <= 0.01, (task, key, value, ox[task][key])


def test_cli_export_half_and_torchscript(model_file):
    fp16 = run(["export", f"model={model_file}", "format=onnx", f"imgsz={IMGSZ}", "half=True", "simplify=False"])
    meta = {p.key: p.value for p in onnx.load(fp16).metadata_props}
    assert ast.literal_eval(meta["args"])["quantize"] == 16
    assert Path(run(["export", f"model={model_file}", "format=torchscript", f"imgsz={IMGSZ}"])).is_file()


def test_missing_onnx_packages_fail_before_any_install(monkeypatch):
    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "onnxslim" else object())
    with pytest.raises(ModuleNotFoundError, match=r"onnxslim.*yolo-unified\[export\]"):
        export.check_onnx_packages()
