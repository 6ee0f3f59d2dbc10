"""The unified model: output shapes, parameter and latency budget, weight transfer, checkpoints."""

import copy
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, load_checkpoint
from ultralytics.utils.loss import SemanticSegmentationLoss

from yolo_unified.nn import UnifiedHead, UnifiedModel
from yolo_unified.nn.loss import IMAGES_PER_PASS, SemanticLoss
from yolo_unified.nn.modules import BinExpectation

NAMES = {
    "seg": {i: f"s{i}" for i in range(21)},
    "det": {i: f"d{i}" for i in range(10)},
    "cls": {i: f"c{i}" for i in range(10)},
}
SHARED_CLS = (REPO / "../shared/weights/yolov8n-cls-imagenette.pt").resolve()


@pytest.fixture(scope="module")
def model() -> UnifiedModel:
    return UnifiedModel(task_names=NAMES, verbose=False).eval()


def test_outputs_have_the_documented_shapes(model):
    x = torch.rand(2, 3, 256, 192)
    with torch.no_grad():
        det, seg, cls, raw = model(x)
    anchors = sum((256 // s) * (192 // s) for s in (8, 16, 32))
    assert det.shape == (2, 4 + 10, anchors)
    assert seg.shape == (2, 21, 32, 24)  # stride-8 logits: the validator and predictor upsample them
    assert cls.shape == (2, 10)
    torch.testing.assert_close(cls.sum(1), torch.ones(2))
    assert raw["seg"] is seg
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_training_mode_returns_raw_outputs_of_every_task():
    m = UnifiedModel(task_names=NAMES, verbose=False).train()
    raw = m(torch.rand(1, 3, 128, 128))
    assert set(raw) == {"boxes", "scores", "feats", "seg", "cls"}
    assert raw["boxes"].shape == (1, 64, 16 * 16 + 8 * 8 + 4 * 4)
    assert raw["scores"].shape == (1, 10, 16 * 16 + 8 * 8 + 4 * 4)


def test_class_counts_follow_the_data():
    names = {"seg": {0: "bg", 1: "a"}, "det": {0: "x"}, "cls": {0: "p", 1: "q", 2: "r"}}
    m = UnifiedModel(task_names=names, verbose=False)
    head = m.model[-1]
    assert (head.nc, head.nc_seg, head.nc_cls) == (1, 2, 3)
    assert m.names == {0: "x"} and m.task_names["cls"] == {0: "p", 1: "q", 2: "r"}


def test_parameters_and_latency_against_ultralytics_detector(model):
    """Under 2M parameters, and one forward pass for three tasks no slower than Ultralytics' YOLOv8n detector alone
    (medians of runs in alternation at 512 px, so that the machine's load hits both alike)."""
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    detector = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    x, times = torch.rand(1, 3, 512, 512), {"unified": [], "detector": []}
    with torch.no_grad():
        model(x), detector(x)
        for _ in range(5):
            for name, m in (("unified", model), ("detector", detector)):
                t = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t)
    median = {name: sorted(t)[2] for name, t in times.items()}
    assert median["unified"] < median["detector"], median  # measured here: about 0.6x


def test_backbone_is_yolov8n_layers_0_to_9(model):
    ref = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    own = {k: v.shape for k, v in model.state_dict().items() if int(k.split(".")[1]) < 10}
    theirs = {k: v.shape for k, v in ref.state_dict().items() if int(k.split(".")[1]) < 10}
    assert own == theirs and len(own) == 162


def test_pretrained_detection_checkpoint_transfers_the_backbone(tmp_path):
    src = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    torch.save({"model": src.half()}, tmp_path / "yolov8n.pt")
    weights, _ = load_checkpoint(tmp_path / "yolov8n.pt")
    m = UnifiedModel(task_names=NAMES, verbose=False)
    assert m.load(weights) == 162  # all of layers 0-9, nothing of the YOLOv8 neck/head
    torch.testing.assert_close(m.model[4].cv1.conv.weight, weights.model[4].cv1.conv.weight.float())


def test_pretrained_classification_checkpoint_transfers_layers_0_to_8(tmp_path):
    src = ClassificationModel("yolov8n-cls.yaml", nc=10, verbose=False)
    torch.save({"model": src}, tmp_path / "yolov8n-cls.pt")
    weights, _ = load_checkpoint(tmp_path / "yolov8n-cls.pt")
    assert UnifiedModel(task_names=NAMES, verbose=False).load(weights) == 150  # SPPF (layer 9) differs


@pytest.mark.skipif(not SHARED_CLS.is_file(), reason=f"shared backbone weights not found at {SHARED_CLS}")
def test_shared_imagenette_backbone_loads():
    weights, _ = load_checkpoint(SHARED_CLS)
    assert UnifiedModel(task_names=NAMES, verbose=False).load(weights) == 150


def test_fused_model_matches_the_trained_one():
    """Fusing folds each pyramid level's BatchNorm of the shared tower into its own conv: outputs stay the same."""
    m = UnifiedModel(task_names=NAMES, verbose=False).train()
    for _ in range(3):  # move the running statistics away from their initial values, differently per level
        m(torch.rand(2, 3, 128, 128) * 3)
    m.eval().double()
    x = torch.rand(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)[:3]
        fused = copy.deepcopy(m).fuse(verbose=False)
        assert fused.is_fused() and not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
        for a, b in zip(ref, fused(x)[:3], strict=True):
            torch.testing.assert_close(a, b)


def test_bin_expectation_decodes_as_ultralytics_dfl():
    """The head's box decode gives Ultralytics' DFL values (the expected bin under each side's softmax)."""
    x = torch.randn(2, 64, 300) * 3
    assert torch.allclose(BinExpectation(16)(x), DFL(16)(x), atol=1e-5)
    peaked = torch.full((1, 64, 1), -50.0)
    peaked[0, [3, 16 + 7, 32 + 0, 48 + 15]] = 50.0  # each side certain of one bin
    assert BinExpectation(16)(peaked).flatten().tolist() == pytest.approx([3, 7, 0, 15])


@pytest.mark.parametrize("class_weights", [False, True])
def test_semantic_loss_equals_ultralytics(class_weights):
    """SemanticLoss gives Ultralytics' CE + Dice values and gradients, ignored pixels and class weights included."""
    assert IMAGES_PER_PASS < 6
    nc = 5
    weights = torch.rand(nc) + 0.5 if class_weights else None
    view = SimpleNamespace(model=[SimpleNamespace(nc=nc)], args=SimpleNamespace(data="x"), class_weights=weights)
    view.parameters = lambda: iter([torch.zeros(1)])
    torch.manual_seed(0)
    masks = torch.randint(0, nc, (6, 64, 48))  # more images than one pass takes (IMAGES_PER_PASS)
    masks[0, :10] = 255
    masks[1] = 2  # one image with a single class
    batch = {"semantic_mask": masks}
    results = []
    for loss in (SemanticSegmentationLoss(view), SemanticLoss(view)):
        logits = torch.randn(6, nc, 8, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        total, items = loss(logits, batch)
        total.backward()
        results.append((total.detach(), items["ce_loss"], items["dice_loss"], logits.grad))
    for ours, ultralytics in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, ultralytics, rtol=1e-5, atol=1e-6)


def test_grouped_tower_fuses_to_the_same_outputs():
    head = UnifiedHead(nc=3, nc_seg=4, nc_cls=5, tower=1, groups=4, ch=(64, 64, 64))
    assert head.tower[0].conv.groups == 4 and head.tower[0].conv.weight.shape == (64, 16, 3, 3)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    x = [torch.rand(1, 64, s, s) for s in (16, 8, 4)]
    for bn in head.tower[0].bn:  # non-trivial statistics, so folding them has something to fold
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    head.eval()
    with torch.no_grad():
        before = head(x)[:3]
        head.fuse()
        after = head(x)[:3]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        UnifiedHead(groups=3, ch=(64, 64, 64))
