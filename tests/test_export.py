"""Export round trips: ONNX, TorchScript and OpenVINO outputs match PyTorch on real images; metadata; INT8 exports
(ONNX Runtime, OpenVINO) agree with fp32 and validate; exported models validate; bad input fails clearly."""

import ast
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import openvino as ov
import pytest
import torch
import yaml
from ultralytics.nn.autobackend import AutoBackend
from ultralytics.nn.tasks import load_checkpoint

from yolo_unified import UnifiedYOLO, cli, export, workflows
from yolo_unified.cli import run
from yolo_unified.data.config import load_data_config
from yolo_unified.data.transforms import letterbox
from yolo_unified.nn.modules import upsample_logits

IMGSZ = 64
BOX_PX, TOL = 1e-2, 1e-3  # parity: decoded boxes in pixels, everything else (scores, seg logits, class probabilities)
REL_TOL = 1e-3  # OpenVINO fp32 parity: largest error of each output relative to its largest magnitude


def task_files(synth_yaml: str, split: str, per_task: int, tasks: tuple[str, ...] = ("det", "seg", "cls")) -> list:
    """The first `per_task` images of the `split` of each of `tasks` in the synthetic dataset."""
    cfg = load_data_config(synth_yaml)
    return [f for t in tasks for f in sorted(Path(cfg["tasks"][t][split]).rglob("*.jpg"))[:per_task]]


def images(
    synth_yaml: str,
    shape: tuple[int, int],
    split: str = "val",
    per_task: int = 1,
    tasks: tuple[str, ...] = ("det", "seg", "cls"),
) -> torch.Tensor:
    """Real images of every task (or of `tasks`) of the synthetic dataset, letterboxed to `shape` as predict does."""
    files = task_files(synth_yaml, split, per_task, tasks)
    boxed = [letterbox(cv2.imread(str(f)), list(shape))[0][..., ::-1].transpose(2, 0, 1).copy() for f in files]
    return torch.from_numpy(np.stack(boxed)).float() / 255


def fit_class_probe(model: torch.nn.Module, synth_yaml: str) -> None:
    """Fit the cls projection by ridge regression of the pooled features of the cls train images on their labels.

    A trained classifier makes clear calls on its images, where a random projection makes near ties that any rounding
    flips: INT8 agreeing with fp32 on the image class then means something. Ridge regression (lambda 10) on features
    standardised with their deviations floored at the mean deviation, as weight decay keeps a trained layer from
    reading a near-constant feature through a huge weight (which would turn any rounding of it into a new class).
    """
    head, files = model.model[-1], task_files(synth_yaml, "train", per_task=8, tasks=("cls",))
    names = list(load_data_config(synth_yaml)["tasks"]["cls"]["names"].values())
    targets = torch.nn.functional.one_hot(torch.tensor([names.index(f.parent.name) for f in files])).float() * 2 - 1
    pooled = []
    hook = head.cls.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    with torch.no_grad():
        model(images(synth_yaml, (IMGSZ, IMGSZ), "train", per_task=8, tasks=("cls",)))
    hook.remove()
    mean, std = pooled[0].mean(0), pooled[0].std(0)
    std = std.clamp(min=std.mean().item())  # a near-constant feature is not blown up into a large weight
    a = torch.cat([(pooled[0] - mean) / std, torch.ones(len(files), 1)], 1)
    w = torch.linalg.solve(a.T @ a + 10 * torch.eye(a.shape[1]), a.T @ targets)  # on standardised features
    head.cls.weight.data, head.cls.bias.data = (w[:-1] / std[:, None]).T.contiguous(), w[-1] - (mean / std) @ w[:-1]


def varied_checkpoint(synth_yaml: str, project: Path) -> str:
    """A checkpoint as the trainer writes it (one epoch), then given varied outputs without more training.

    An untrained network's activations fade to almost nothing, where outputs are the biases and any parity holds
    trivially: batch-norm statistics are set from real images (variances floored at each layer's mean) and the output
    projections drawn at random (then the classification one fitted, `fit_class_probe`), so boxes, scores, seg maps
    and classes vary from anchor to anchor and image to image.
    """
    out = workflows.train(task="det", data=synth_yaml, epochs=1, imgsz=IMGSZ, batch=8, workers=0, plots=False,
                       val=False, project=str(project))  # fmt: skip
    ckpt = torch.load(out["weights"], weights_only=False)
    model = ckpt["model"].float()  # the EMA weights: a final checkpoint keeps them here (Ultralytics strip_optimizer)
    torch.manual_seed(0)
    for layer in (model.model[-1].det, model.model[-1].seg, model.model[-1].cls):
        torch.nn.init.normal_(layer.weight, std=0.1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum, bn.num_batches_tracked = None, torch.zeros_like(bn.num_batches_tracked)  # one pass sets them
    with torch.no_grad():
        model.train()(images(synth_yaml, (IMGSZ, IMGSZ), "train", per_task=8))
    for bn in norms:  # scaling near-constant channels up to unit variance would make a net that amplifies any
        bn.running_var.clamp_(min=bn.running_var.mean().item())  # rounding (INT8, bf16) layer after layer
    fit_class_probe(model.eval(), synth_yaml)
    model.task_imgsz = dict.fromkeys(("seg", "det", "cls"), IMGSZ)  # it stands for a model of all three tasks
    ckpt["model"] = model.half()
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
    pt = UnifiedYOLO(model_file).val(batch=4, name="pt", **common)
    ox = run(["val", f"model={onnx_file}", *(f"{k}={v}" for k, v in common.items()), "name=onnx"])
    assert set(ox) == set(pt) == {"seg", "det", "cls"}
    for task, metrics in pt.items():
        for key, value in metrics.items():
            assert abs(ox[task][key] - value) <= 0.01, (task, key, value, ox[task][key])


def test_an_exported_model_validates_the_tasks_it_was_trained_on(model_file, synth_yaml, tmp_path):
    """A detection-only model (``task_imgsz`` of det alone) exported and validated on three-task data: det only."""
    ckpt = torch.load(model_file, weights_only=False)
    ckpt["model"].task_imgsz = {"det": IMGSZ}
    torch.save(ckpt, model_file)
    onnx_file = UnifiedYOLO(model_file).export(format="onnx", imgsz=IMGSZ)
    meta = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    assert ast.literal_eval(meta["task_imgsz"]) == {"det": IMGSZ}
    scores = UnifiedYOLO(onnx_file).val(data=synth_yaml, imgsz=IMGSZ, plots=False, project=str(tmp_path))
    assert set(scores) == {"det"}


def test_cli_export_half_and_torchscript(model_file):
    fp16 = run(["export", f"model={model_file}", "format=onnx", f"imgsz={IMGSZ}", "half=True", "simplify=False"])
    meta = {p.key: p.value for p in onnx.load(fp16).metadata_props}
    assert ast.literal_eval(meta["args"])["quantize"] == 16
    assert Path(run(["export", f"model={model_file}", "format=torchscript", f"imgsz={IMGSZ}"])).is_file()


def test_missing_onnx_packages_fail_before_any_install(monkeypatch):
    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "onnxslim" else object())
    with pytest.raises(ModuleNotFoundError, match=r"onnxslim.*yolo-unified\[export\]"):
        export.check_onnx_packages()


def relative_errors(ref: list[torch.Tensor], out: list[torch.Tensor]) -> dict[str, float]:
    """Largest error of each output relative to the largest magnitude of PyTorch's."""
    return {
        n: ((r - o).abs().max() / r.abs().max()).item()
        for n, r, o in zip(export.OUTPUT_NAMES, ref[:3], out, strict=True)
    }


def test_openvino_fp32_matches_pytorch_and_names_its_outputs(model_file, synth_yaml, logged):
    folder = Path(UnifiedYOLO(model_file).export(format="openvino", imgsz=IMGSZ))
    assert folder.name == "best_openvino_model"
    assert "yolo-unified predict model=" in logged.text and "task=unified" not in logged.text  # runnable hints
    core = ov.Core()  # fp32 as exported: OpenVINO would run it in bf16 on CPUs with AMX / AVX512-BF16
    compiled = core.compile_model(
        core.read_model(next(folder.glob("*.xml"))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    assert [o.get_names() for o in compiled.outputs] == [{n} for n in export.OUTPUT_NAMES]
    x = images(synth_yaml, (IMGSZ, IMGSZ))
    with torch.inference_mode():
        ref = AutoBackend(model_file, verbose=False)(x)
    outs = [compiled(im[None].numpy()) for im in x]  # batch 1, as exported
    out = [torch.from_numpy(np.concatenate([o[n] for o in outs])) for n in export.OUTPUT_NAMES]
    assert [tuple(t.shape) for t in out] == [tuple(t.shape) for t in ref[:3]]
    assert max(relative_errors(ref, out).values()) <= REL_TOL, relative_errors(ref, out)


@pytest.fixture(scope="module")
def int8_models(weights, tmp_path_factory) -> dict[str, str]:
    """INT8 ONNX and OpenVINO exports of the checkpoint, calibrated on its own training data (no data= given)."""
    model_file = shutil.copy(weights, tmp_path_factory.mktemp("int8") / "best.pt")
    return {fmt: UnifiedYOLO(model_file).export(format=fmt, imgsz=IMGSZ, quantize=8) for fmt in ("onnx", "openvino")}


def decisive(probs: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Where the top class's probability (dim 1) leads the runner-up's by `margin` or more: a clear call, which INT8
    noise should not change (a near tie may flip either way)."""
    top2 = probs.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1] >= margin


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_exports_agree_with_fp32(int8_models, weights, synth_yaml, fmt):
    assert Path(int8_models[fmt]).name == {"onnx": "best_int8.onnx", "openvino": "best_int8_openvino_model"}[fmt]
    x = images(synth_yaml, (IMGSZ, IMGSZ), split="train", per_task=8)  # not the (val) calibration images
    with torch.inference_mode():
        ref = AutoBackend(weights, verbose=False)(x)
        out = AutoBackend(int8_models[fmt], verbose=False)(x)  # as predict and val load it
    assert [tuple(t.shape) for t in out] == [tuple(t.shape) for t in ref[:3]]
    assert all(torch.isfinite(t).all() for t in out)
    errors = relative_errors(ref, out)
    cls_images = slice(16, 24)  # the 8 classification images of the 24, 3 classes (det, seg, cls in turn)
    assert len(set(ref[2][cls_images].argmax(1).tolist())) == 3  # the fitted classifier tells them apart
    same_class = out[2][cls_images].argmax(1) == ref[2][cls_images].argmax(1)
    assert same_class.sum() >= 7, errors  # the image class of all but at most one image (HW2's bug: 5 of 8 here)
    clear = decisive(ref[1].softmax(1), margin=0.02)  # seg pixels with a clear class (an untrained seg head: few)
    assert clear.any() and (out[1].argmax(1) == ref[1].argmax(1))[clear].float().mean() >= 0.9, errors


def tower_biases(folder: str) -> dict[str, np.ndarray]:
    """The bias of each convolution of the head's tower in an OpenVINO export, by node name."""
    model = ov.Core().read_model(str(next(Path(folder).glob("*.xml"))))
    adds = [op for op in model.get_ordered_ops() if op.get_type_name() == "Add" and ".tower." in op.get_friendly_name()]
    return {
        op.get_friendly_name(): op.input_value(i).get_node().get_data().astype(np.float64).ravel()
        for op in adds
        for i in range(2)
        if "_convolution" in op.get_friendly_name() and op.input_value(i).get_node().get_type_name() == "Constant"
    }


def test_openvino_int8_leaves_the_tower_biases_alone(int8_models, weights, tmp_path):
    """NNCF's default ``FastBiasCorrection`` shifts the tower's biases by a gap fp32 has already (export.nncf_options);
    every image then carries the shift, and the pooled classifier reads it as a feature."""
    fp32 = tower_biases(UnifiedYOLO(shutil.copy(weights, tmp_path / "best.pt")).export(format="openvino", imgsz=IMGSZ))
    int8 = tower_biases(int8_models["openvino"])
    assert fp32 and fp32.keys() == int8.keys()  # a fused convolution per tower layer and pyramid level
    shifts = {k.split("/")[0]: np.abs(int8[k] - b).mean() / np.abs(b).mean() for k, b in fp32.items()}
    assert max(shifts.values()) <= 0.02, shifts  # FastBiasCorrection: 0.04-0.10


def test_int8_onnx_graph_is_quantized_and_keeps_the_output_names(int8_models):
    graph = onnx.load(int8_models["onnx"]).graph
    assert [o.name for o in graph.output] == list(export.OUTPUT_NAMES)
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # static QDQ


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_model_validates_every_task_and_predicts(int8_models, synth_yaml, tmp_path, fmt):
    common = [f"data={synth_yaml}", f"imgsz={IMGSZ}", "plots=False", f"project={tmp_path}"]
    metrics = run(["val", f"model={int8_models[fmt]}", *common])
    assert set(metrics) == {"seg", "det", "cls"}
    assert all(np.isfinite(v) for m in metrics.values() for v in m.values())
    image = str(task_files(synth_yaml, "val", per_task=1, tasks=("det",))[0])
    result = UnifiedYOLO(int8_models[fmt]).predict(image, imgsz=IMGSZ, verbose=False)[0]
    assert result.semantic_mask.data.shape == cv2.imread(image).shape[:2] and result.probs is not None


def test_calibration_images_mix_every_task_in_equal_shares(synth_yaml):
    dataset = export.CalibrationImages(synth_yaml, [IMGSZ, 48], split="val", fraction=0.5)
    assert len(dataset) == 6  # 2 of the 4 val images of each task
    root = load_data_config(synth_yaml)["path"]
    assert [f.relative_to(root).parts[0] for f in dataset.files] == ["seg", "det", "cls"] * 2  # in turn
    img = dataset[0]["img"]
    assert img.dtype == torch.uint8 and img.shape == (3, IMGSZ, 48)
    assert len(export.CalibrationImages(synth_yaml, [IMGSZ, IMGSZ])) == 12  # all of them by default


def test_int8_export_without_calibration_data_says_which_key_to_set(weights, tmp_path):
    model = load_checkpoint(weights)[0]
    exporter = export.UnifiedExporter(overrides={"format": "onnx", "quantize": 8, "imgsz": IMGSZ})
    model.args = {**model.args, "data": None}
    with pytest.raises(ValueError, match="set data="):
        exporter(model)
    model.args["data"] = str(tmp_path / "moved.yaml")  # trained on data that is not here
    with pytest.raises(FileNotFoundError, match="training data.*not found: set data="):
        exporter(model)


def test_cli_bad_int8_export_gives_one_line(weights, tmp_path, monkeypatch, logged):
    ckpt = torch.load(weights, weights_only=False)
    ckpt["train_args"]["data"] = None  # a checkpoint that does not say what it was trained on
    torch.save(ckpt, tmp_path / "best.pt")
    monkeypatch.setattr(
        "sys.argv", ["yolo-unified", "export", f"model={tmp_path / 'best.pt'}", "format=onnx", "quantize=8"]
    )
    with pytest.raises(SystemExit, match="2"):
        cli.entrypoint()
    assert "set data=" in logged.text and "Traceback" not in logged.text
    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "nncf" else object())
    monkeypatch.setattr("sys.argv", ["yolo-unified", "export", f"model={weights}", "format=openvino", "quantize=8"])
    with pytest.raises(SystemExit, match="2"):
        cli.entrypoint()
    assert 'needs nncf: pip install "yolo-unified[export]"' in logged.text


@pytest.mark.parametrize(
    "fmt, quantize, missing",
    [("openvino", None, "openvino"), ("openvino", 8, "nncf"), ("onnx", 8, "onnxruntime")],
)
def test_missing_export_packages_name_the_extra(weights, monkeypatch, fmt, quantize, missing):
    monkeypatch.setattr(export, "find_spec", lambda name: None if name == missing else object())
    exporter = export.UnifiedExporter(overrides={"format": fmt, "quantize": quantize, "imgsz": IMGSZ})
    with pytest.raises(ModuleNotFoundError, match=rf'needs {missing}: pip install "yolo-unified\[export\]"'):
        exporter(load_checkpoint(weights)[0])


def test_export_and_val_refuse_data_whose_classes_differ_from_the_heads(weights, synth_yaml, tmp_path):
    """INT8 calibration on a data YAML with other class counts than the checkpoint's heads, val on one with none of
    its classes: one message each."""
    data = yaml.safe_load(Path(synth_yaml).read_text())
    data["det"]["names"] = {0: "a", 1: "b"}  # 2 detection classes; the model has 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**data, "path": str(load_data_config(synth_yaml)["path"])}))
    mismatch = r"best.pt: its heads do not match the class counts of .*other.yaml \(det 3 vs 2; model vs data\)"
    with pytest.raises(ValueError, match=mismatch):
        UnifiedYOLO(weights).export(format="onnx", quantize=8, data=str(other), imgsz=IMGSZ)
    unknown = r"other.yaml: the model has none of its 'det' classes \['a', 'b'\] \(the model's: \['circle', "
    with pytest.raises(ValueError, match=unknown):  # val matches classes by name: it has none of these
        UnifiedYOLO(weights).val(data=str(other), project=str(tmp_path))
