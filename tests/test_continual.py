"""Forgetting-mitigation strategies, each on its own, on tiny models and the tiny synthetic data."""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from ultralytics.cfg import get_cfg

from yolo_unified.continual import STRATEGIES, StageContext, build_strategies, diagonal_fisher
from yolo_unified.continual.ewc import EWC, mean_normalised
from yolo_unified.continual.feat_distill import FeatDistill
from yolo_unified.continual.lwf import LwF
from yolo_unified.continual.output_reg import OutputReg
from yolo_unified.continual.pseudo_label import PseudoLabel, pseudo_labels
from yolo_unified.continual.replay import Replay
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.nn import UnifiedModel
from yolo_unified.workflows import train

TINY = dict(
    imgsz=64, batch=4, epochs=1, workers=0, plots=False, val=False, optimizer="AdamW", lr0=0.01, warmup_epochs=0
)


def test_fisher_is_the_mean_of_per_sample_squared_gradients():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    samples = [{"x": torch.randn(1, 3), "y": torch.randint(0, 2, (1,))} for _ in range(5)]

    def loss_fn(m, s):
        return nn.functional.cross_entropy(m(s["x"]), s["y"])

    fisher = diagonal_fisher(model, samples, loss_fn)
    per_sample = []
    for s in samples:
        grads = torch.autograd.grad(loss_fn(model, s), list(model.parameters()))
        per_sample.append([g**2 for g in grads])
    expected = [torch.stack(gs).mean(0) for gs in zip(*per_sample, strict=True)]
    torch.testing.assert_close(fisher["weight"], expected[0])
    torch.testing.assert_close(fisher["bias"], expected[1])
    # the known bug (square of the mean gradient) gives a clearly smaller estimate
    batch_mean = torch.autograd.grad(sum(loss_fn(model, s) for s in samples) / 5, model.weight)[0] ** 2
    assert batch_mean.sum() < 0.9 * fisher["weight"].sum()


@pytest.fixture
def names(synth_yaml):
    from yolo_unified.data.config import load_data_config, task_names

    return task_names(load_data_config(synth_yaml))


def teacher_context(model: UnifiedModel, tmp_path, previous=("seg", "det")) -> StageContext:
    """A stage-3 context whose teacher (the model the stage starts from) is `model`, saved as a checkpoint."""
    ckpt = tmp_path / "teacher.pt"
    torch.save({"model": copy.deepcopy(model)}, ckpt)
    return StageContext(index=len(previous), task="cls", previous=list(previous), prev_weights=str(ckpt))


CPU_TRAINER = type("T", (), {"device": torch.device("cpu")})()


@pytest.mark.parametrize(
    "cls, cfg", [(LwF, {"temperature": 2.0}), (OutputReg, {}), (FeatDistill, {"distance": "l2"}),
                 (FeatDistill, {"distance": "cosine"}), (FeatDistill, {"distance": "pod"})]
)  # fmt: skip
def test_distillation_is_zero_for_an_unchanged_model_and_positive_after_a_change(cls, cfg, names, tmp_path):
    model = UnifiedModel(task_names=names, verbose=False).eval()
    strategy = cls({"weight": 1.0, **cfg}, teacher_context(model, tmp_path))
    strategy.setup(CPU_TRAINER)
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        raw = model(img)[-1]
        term, parts = strategy.loss(model, raw, {"img": img})
        assert abs(float(term)) < 1e-6 and len(parts) == 1 and len(next(iter(parts))) <= 10  # fits the progress bar
        for p in model.parameters():  # a weight change, as training makes
            p.add_(0.05 * torch.randn_like(p))
        assert float(strategy.loss(model, model(img)[-1], {"img": img})[0]) > 1e-4


def known_teacher(previous: list[str], outputs: dict[str, torch.Tensor]) -> StageContext:
    """A context whose teacher gives the raw `outputs` on any image."""
    context = StageContext(index=1, task="det", previous=previous)
    context._teacher = lambda img: (None, None, None, outputs)
    return context


def test_output_reg_is_the_l2_of_the_raw_outputs_not_lwf_kl():
    img = torch.zeros(2, 3, 8, 8)
    student = {"seg": torch.zeros(2, 4, 2, 2), "cls": torch.zeros(2, 3)}
    teacher = {"seg": torch.full((2, 4, 2, 2), 3.0), "cls": torch.ones(2, 3)}  # every logit shifted alike
    term, parts = OutputReg({"weight": 0.5}, known_teacher(["seg", "cls"], teacher)).loss(None, student, {"img": img})
    assert float(term) == pytest.approx(0.5 * (3.0**2 + 1.0**2)) and set(parts) == {"output_reg"}
    kl = LwF({"weight": 0.5}, known_teacher(["seg", "cls"], teacher)).loss(None, student, {"img": img})[0]
    assert float(kl) == pytest.approx(0.0, abs=1e-6)  # the same softmax: LwF sees no change


OLD_DEFAULTS = {  # each strategy's defaults, as its cfg.get(...) calls had them before the settings were typed
    "ewc": {"lam": 1.0, "samples": 64, "decay": 1.0, "normalize": True},
    "lwf": {"weight": 1.0, "temperature": 2.0},
    "output_reg": {"weight": 1.0},
    "pseudo_label": {"weight": 1.0, "conf": 0.25},
    "feat_distill": {"weight": 1.0, "distance": "l2"},
    "replay": {"size": 10, "ratio": None, "batch": 2, "weight": 1.0, "mix": False, "oversample": False,
               "tasks": ["seg", "det", "cls"], "augment": False, "distill": 0.0, "temperature": 2.0},
    "forget_stop": {"every": 1, "patience": 0},
    "old_labels": {"conf": 0.5, "iou": 0.5},
    "old_distill": {"weight": 1.0, "temperature": 2.0, "tasks": ["seg", "det", "cls"]},
    "clip_grad": {"max_norm": 10.0},
    "lr_mult": dict.fromkeys(["backbone", "neck", "tower", "det", "seg", "cls"]),
    "bn_freeze": {},
}  # fmt: skip


@pytest.mark.parametrize(
    "value, on", [({}, True), (True, True), ({"lam": 1.0}, True), (None, False), (False, False), (0, False)]
)
def test_an_empty_mapping_switches_a_strategy_on_with_its_defaults(value, on):
    built = build_strategies(SimpleNamespace(ewc=value), StageContext(index=0, task="det"))
    assert [s.key for s in built] == (["ewc"] if on else [])


@pytest.mark.parametrize("key", OLD_DEFAULTS)
def test_typed_settings_keep_the_defaults_and_reject_unknown_keys_and_wrong_types(key):
    cls, context = STRATEGIES[key], StageContext(index=0, task="det")
    assert dataclasses.asdict(cls({}, context).settings) == OLD_DEFAULTS[key]
    assert all(f.metadata.get("meaning") for f in dataclasses.fields(cls.Settings))  # each says what it is
    with pytest.raises(ValueError, match=f"^{key}: unknown setting 'zzz'"):
        cls({"zzz": 1}, context)
    for name in OLD_DEFAULTS[key]:
        with pytest.raises(ValueError, match=f"^{key}: setting '{name}' .*must be .*, got 'text'"):
            cls({name: "text"}, context)


@pytest.mark.parametrize(
    "key, value, message",
    [("replay", {"sise": 20}, "replay: unknown setting 'sise' \\(did you mean 'size'\\?\\)"),
     ("lr_mult", {"backbon": 0.1}, "did you mean 'backbone'"),
     ("feat_distill", {"distance": "l1"}, "'distance' .* must be one of 'l2', 'cosine', 'pod', got 'l1'"),
     ("replay", {"tasks": ["dett"]}, "must be a list of values among 'seg', 'det', 'cls', got \\['dett'\\]"),
     ("replay", 20, "replay=20: give its settings as a mapping"),
     ("clip_grad", True, "clip_grad: setting 'max_norm' .* must be a number, got True")],
)  # fmt: skip
def test_a_wrong_setting_fails_naming_the_strategy_and_the_setting(key, value, message):
    with pytest.raises(ValueError, match=message):
        STRATEGIES[key](value, StageContext(index=0, task="det"))


def test_a_protocol_checks_every_stages_settings_before_training(synth_yaml, tmp_path):
    stages = [{"task": "seg", "epochs": 1}, {"task": "det", "epochs": 1, "ewc": {"lamb": 10}}]
    with pytest.raises(ValueError, match="stage 2: ewc: unknown setting 'lamb' \\(did you mean 'lam'\\?\\)"):
        train(data=synth_yaml, stages=stages, project=str(tmp_path), name="p")
    assert not (tmp_path / "p" / "1-seg").exists()  # nothing trained


def test_pseudo_labels_are_the_teachers_own_predictions(names):
    torch.manual_seed(0)
    model = UnifiedModel(task_names=names, verbose=False).eval()
    with torch.no_grad():
        model.model[-1].det.bias[64:] = 2.0  # confident class scores: boxes survive NMS
        model.model[-1].seg.weight.normal_()  # distinct seg logits (the initial ones are ~1e-6, all but tied)
        img = torch.rand(2, 3, 64, 64)
        outputs = model(img)
    det, seg, cls, _ = outputs
    labels = pseudo_labels(outputs, "seg", img, conf=0.0)
    assert torch.equal(labels["semantic_mask"].long(), seg.argmax(1))
    ignored = pseudo_labels(outputs, "seg", img, conf=1.01)["semantic_mask"]
    assert (ignored == 255).all()  # no pixel is that confident: all ignored
    assert torch.equal(pseudo_labels(outputs, "cls", img, conf=0.25)["cls"], cls.argmax(1))
    boxes = pseudo_labels(outputs, "det", img, conf=0.25)
    from ultralytics.utils.nms import non_max_suppression

    kept = non_max_suppression(det, conf_thres=0.25, iou_thres=0.7, nc=det.shape[1] - 4)
    assert len(boxes["bboxes"]) == sum(len(k) for k in kept) > 0
    first = kept[0][0].clamp(0, 64)  # clipped to the 64x64 image
    cx, cy = (first[0] + first[2]) / 2 / 64, (first[1] + first[3]) / 2 / 64
    i = int((boxes["batch_idx"] == 0).nonzero()[0])
    torch.testing.assert_close(boxes["bboxes"][i, :2], torch.stack([cx, cy]))
    assert int(boxes["cls"][i]) == int(first[5]) and ((boxes["bboxes"] >= 0) & (boxes["bboxes"] <= 1.0001)).all()


def test_pseudo_label_rehearsal_is_small_for_the_teacher_and_grows_after_a_change(names, tmp_path):
    torch.manual_seed(0)
    model = UnifiedModel(task_names=names, verbose=False)
    model.args = get_cfg()
    strategy = PseudoLabel({"weight": 1.0, "conf": 0.0}, teacher_context(model.eval(), tmp_path, ["seg", "cls"]))
    img = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        own = float(strategy.loss(model, model(img)[-1], {"img": img})[0])
        for p in model.model[-1].seg.parameters():
            p.add_(torch.randn_like(p))
        for p in model.model[-1].cls.parameters():
            p.add_(torch.randn_like(p))
        moved = float(strategy.loss(model, model(img)[-1], {"img": img})[0])
    assert 0 < own < moved  # the teacher's own arg-max labels cost least (cross-entropy of a soft prediction > 0)


def trained(synth_yaml, tmp_path, task="det", context=None, **overrides):
    """A one-epoch stage on the tiny data; returns the trainer and the model it started from."""
    args = {**TINY, "data": synth_yaml, "save_dir": str(tmp_path / task), **overrides}
    trainer = TRAINERS[task](overrides=args, context=context)
    start = {}

    def snapshot(t):
        start.update({k: v.detach().clone() for k, v in t.model.state_dict().items()})

    trainer.add_callback("on_train_start", snapshot)
    trainer.train()
    return trainer, start


def test_zero_lr_multiplier_freezes_a_module_exactly(synth_yaml, tmp_path):
    trainer, start = trained(synth_yaml, tmp_path, lr_mult={"backbone": 0.0, "seg": 0.0, "det": 1.0}, weight_decay=0.1)
    groups = {g["module"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert "backbone" not in groups and "seg" not in groups and groups["det"] == pytest.approx(0.01)
    end = trainer.model.state_dict()
    frozen = [k for k in end if k.startswith(tuple(f"model.{i}." for i in range(10))) or k.startswith("model.11.seg")]
    assert frozen and all(torch.equal(end[k], start[k]) for k in frozen)  # weights and BatchNorm statistics
    assert not torch.equal(end["model.11.det.weight"], start["model.11.det.weight"])


def test_lr_multipliers_scale_each_module_group(synth_yaml, tmp_path):
    trainer, _ = trained(synth_yaml, tmp_path, lr_mult={"backbone": 0.01, "neck": 0.1, "cls": 10.0})
    lrs = {}
    for g in trainer.optimizer.param_groups:
        lrs.setdefault(g["module"], set()).add(round(g["initial_lr"], 9))
    assert lrs == {"backbone": {1e-4}, "neck": {1e-3}, "tower": {0.01}, "det": {0.01}, "seg": {0.01}, "cls": {0.1}}
    assert trainer.args.warmup_bias_lr == 0.0  # Ultralytics' bias warmup (0.1) would bypass the multipliers


def test_frozen_batchnorm_statistics_do_not_change(synth_yaml, tmp_path):
    later = StageContext(index=1, task="seg", previous=["det"], data=synth_yaml)  # a stage after a finished task
    trainer, start = trained(synth_yaml, tmp_path, task="seg", context=later, bn_freeze=True, bn_momentum=0.1)
    end = trainer.model.state_dict()
    stats = [k for k in end if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(end[k], start[k]) for k in stats)
    assert not torch.equal(end["model.11.seg.weight"], start["model.11.seg.weight"])  # while the weights train
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)  # bn_momentum (Ultralytics builds 0.03)
    first, start = trained(synth_yaml, tmp_path / "first", task="seg", bn_freeze=True)  # nothing to hold yet
    assert not all(torch.equal(first.model.state_dict()[k], start[k]) for k in stats)
    grown = StageContext(index=0, task="seg", old_classes={"seg": 2}, data=synth_yaml)  # adding classes: hold them
    trainer, start = trained(synth_yaml, tmp_path / "grown", task="seg", context=grown, bn_freeze=True)
    assert all(torch.equal(trainer.model.state_dict()[k], start[k]) for k in stats)


def test_replay_buffer_keeps_the_configured_number_of_images(synth_yaml, tmp_path):
    trainer, _ = trained(synth_yaml, tmp_path, task="seg", replay={"size": 3})
    kept = trainer.context.memory["replay"]["seg"]
    assert len(kept) == 3
    assert all(s["img"].shape == (1, 3, 64, 64) and s["semantic_mask"].shape == (1, 64, 64) for s in kept)


def test_ewc_stores_a_fisher_and_penalises_moving_away(synth_yaml, tmp_path):
    trainer, _ = trained(synth_yaml, tmp_path, task="det", ewc={"lam": 10.0, "samples": 3})
    state = trainer.context.memory["ewc"]
    assert state["tasks"] == ["det"] and set(state["fisher"]) == set(state["anchor"])
    assert sum(float(f.sum()) for f in state["fisher"].values()) > 0
    mean = torch.cat([f.flatten() for f in state["fisher"].values()]).mean()
    assert state["normalized"] and float(mean) == pytest.approx(1.0, rel=1e-4)  # lam means the same for any task
    ewc = EWC({"lam": 10.0}, StageContext(index=1, task="cls", previous=["det"], memory=trainer.context.memory))
    ewc.setup(trainer)
    model = UnifiedModel(trainer.model.yaml, task_names=trainer.model.task_names, verbose=False)
    model.load_state_dict({k: v for k, v in state["anchor"].items()}, strict=False)
    img = {"img": torch.zeros(1, 3, 64, 64)}
    assert float(ewc.loss(model, {}, img)[0]) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert float(ewc.loss(model, {}, img)[0]) > 0.0


def test_fisher_normalisation_keeps_the_penalty_minimum_at_the_anchor():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    raw = {n: 1e-6 * torch.rand_like(p) for n, p in model.named_parameters()}  # a tiny raw Fisher
    fisher = mean_normalised(raw)
    assert float(torch.cat([f.flatten() for f in fisher.values()]).mean()) == pytest.approx(1.0)
    for n in raw:  # the same direction: only the scale changes
        torch.testing.assert_close(fisher[n] / fisher["weight"].flatten()[0], raw[n] / raw["weight"].flatten()[0])
    memory = {"ewc": {"fisher": raw, "anchor": anchor}}  # stored raw: normalised on load
    ewc = EWC({"lam": 1.0}, StageContext(index=1, task="cls", previous=["det"], memory=memory))
    ewc.setup(CPU_TRAINER)
    assert float(ewc.loss(model, {}, {})[0]) == 0.0
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-2 * torch.randn_like(p))
        assert float(ewc.loss(model, {}, {})[0]) > 0.0
        with torch.no_grad():
            model.load_state_dict(anchor)


def test_replay_ratio_draws_a_share_of_the_current_batch(names):
    memory = {"replay": {"cls": [{"img": torch.rand(1, 3, 32, 32), "cls": torch.tensor([i % 3])} for i in range(10)]}}
    replay = Replay({"ratio": 0.25}, StageContext(index=1, task="det", previous=["cls"], memory=memory))
    replay.setup(type("T", (), {"device": torch.device("cpu"), "args": get_cfg()})())
    model = UnifiedModel(task_names=names, verbose=False).eval()  # one replayed image: no train-mode BatchNorm
    model.args = get_cfg()
    seen = []
    model.predict = lambda img, *a, **k: seen.append(img.shape[0]) or UnifiedModel.predict(model, img)
    for batch in (16, 8, 1):
        assert float(replay.loss(model, {}, {"img": torch.zeros(batch, 3, 32, 32)})[0]) > 0
    assert seen == [4, 2, 1]
