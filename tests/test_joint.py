"""Joint training: every task in one run, each step a batch of every task, each task's loss on its own images."""

import csv
import json
import logging
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import REPO
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, YAML
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified import workflows
from yolo_unified.cli import entrypoint, parse_tokens, run
from yolo_unified.common import PRIMARY_METRIC, task_imgsz
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.data.sampling import JointLoader, TaskSampler
from yolo_unified.models.unified.joint import JointTrainer, baseline_scores, multitask_fitness, task_losses
from yolo_unified.models.unified.val import validate
from yolo_unified.nn import UnifiedModel

TINY = {"epochs": 2, "imgsz": 64, "batch": 8, "nbs": 8, "workers": 0, "plots": False, "warmup_epochs": 0}
OUTPUTS = {"det": ("boxes", "scores"), "seg": ("seg",), "cls": ("cls",)}  # each task's raw outputs


def rows(file: Path) -> list[dict[str, float]]:
    with open(file) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def task_batches(nc_seg: int, seed: int = 0) -> dict[str, dict]:
    """One random two-image batch per task, in Ultralytics' batch formats."""
    g = torch.Generator().manual_seed(seed)
    img = {t: torch.rand(2, 3, 64, 64, generator=g) for t in OUTPUTS}
    return {
        "det": {"img": img["det"], "cls": torch.tensor([[0.0], [1.0]]), "batch_idx": torch.tensor([0.0, 1.0]),
                "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])},
        "seg": {"img": img["seg"], "semantic_mask": torch.randint(0, nc_seg, (2, 64, 64), generator=g).byte()},
        "cls": {"img": img["cls"], "cls": torch.tensor([0, 2])},
    }  # fmt: skip


def write_data(synth_yaml: str, file: Path, edit) -> str:
    """A copy of the synthetic data YAML with absolute paths, changed by `edit(dict)`."""
    d = YAML.load(synth_yaml)
    d["path"] = str(Path(synth_yaml).parent / d["path"])
    edit(d)
    YAML.save(file, d)
    return str(file)


def test_an_image_of_one_task_adds_nothing_to_the_other_tasks(synth_yaml):
    names = task_names(load_data_config(synth_yaml))
    model = UnifiedModel(task_names=names, verbose=False)
    batches = task_batches(len(names["seg"]))
    for task, batch in batches.items():  # gradient of a task's loss w.r.t. the other tasks' outputs: exactly zero
        preds = model(batch["img"])
        loss, items = model.loss(batch, preds)
        others = [preds[k] for t, keys in OUTPUTS.items() if t != task for k in keys]
        for grad in torch.autograd.grad(loss.sum(), others, allow_unused=True):
            assert grad is None or not grad.any(), task
    losses, items = task_losses(model, {"seg": [batches["seg"]], "det": [batches["det"]]}, ["seg", "det", "cls"])
    assert set(items) == {"seg", "det"} and not losses["cls"].requires_grad and losses["cls"] == 0
    changed = {**batches["det"], "img": torch.rand(2, 3, 64, 64)}  # other detection images: segmentation unchanged
    again, _ = task_losses(model, {"seg": [batches["seg"]], "det": [changed]}, ["seg", "det", "cls"])
    assert torch.equal(again["seg"], losses["seg"]) and not torch.equal(again["det"], losses["det"])
    model.zero_grad()
    losses["seg"].backward()  # a segmentation loss leaves every other task's projection without a gradient
    assert model.model[-1].seg.weight.grad.any()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("model.11.det", "model.11.cls")))


def test_sampler_draws_tasks_in_proportion():
    sizes = {"seg": 100, "det": 300, "cls": 600}
    assert TaskSampler(sizes).draw() == {"seg": 1, "det": 1, "cls": 1}  # round_robin: every task, every step
    proportional = TaskSampler(sizes, "proportional", seed=0)
    assert proportional.probabilities == pytest.approx({"seg": 0.1, "det": 0.3, "cls": 0.6})
    root = {t: n**0.5 for t, n in sizes.items()}  # temperature 2: p ~ sqrt(n)
    temperature = TaskSampler(sizes, "temperature", tau=2.0, seed=0)
    assert temperature.probabilities == pytest.approx({t: r / sum(root.values()) for t, r in root.items()})
    for sampler in (proportional, temperature):
        counts = dict.fromkeys(sizes, 0)
        for _ in range(3000):
            draw = sampler.draw()
            assert sum(draw.values()) == 3  # as many batches a step as tasks
            for t, n in draw.items():
                counts[t] += n
        assert {t: c / 9000 for t, c in counts.items()} == pytest.approx(sampler.probabilities, abs=0.02)
    loader = JointLoader({"seg": [1, 2, 3], "det": [10, 20]}, TaskSampler({"seg": 3, "det": 2}))
    assert len(loader) == 3 and list(loader) == [  # one pass over the largest; the smaller one starts again
        {"seg": [1], "det": [10]}, {"seg": [2], "det": [20]}, {"seg": [3], "det": [10]}
    ]  # fmt: skip
    with pytest.raises(ValueError, match="task_sampling='roundrobin'.*round_robin, proportional, temperature"):
        TaskSampler(sizes, "roundrobin")
    with pytest.raises(ValueError, match="task_share=.*needs task_sampling=round_robin"):
        TaskSampler(sizes, "proportional", shares={"det": 0.5})
    with pytest.raises(ValueError, match="task_tau=0"):
        TaskSampler(sizes, "temperature", tau=0)


def test_task_share_spreads_a_task_evenly_over_the_steps():
    sampler = TaskSampler({"seg": 10, "det": 10, "cls": 10}, shares={"det": 0.5, "cls": 1 / 3})
    draws = [sampler.draw() for _ in range(30)]
    assert all(d["seg"] == 1 for d in draws)  # share 1: every step
    assert [k for k, d in enumerate(draws) if "det" in d] == list(range(1, 30, 2))  # every other step
    assert [k for k, d in enumerate(draws) if "cls" in d] == list(range(2, 30, 3))  # every third step
    sampler.step = 17  # where a resumed run's epoch starts: the same steps as an uninterrupted run
    assert [sampler.draw() for _ in range(13)] == draws[17:]


@pytest.fixture(scope="module")
def joint_run(synth_yaml, tmp_path_factory) -> tuple[dict, Path, str]:
    """cfg/joint.yaml at a tiny size, from the command line; its log."""
    project = tmp_path_factory.mktemp("runs")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        tiny = [f"{k}={v}" for k, v in TINY.items()]
        out = run(["train", f"cfg={REPO / 'cfg/joint.yaml'}", f"data={synth_yaml}", f"project={project}", *tiny])
    finally:
        LOGGER.removeHandler(handler)
    return out, project / "joint", "\n".join(records)


def test_joint_run_writes_every_task_and_the_diagnostics(joint_run, synth_yaml, tmp_path):
    out, root, log = joint_run
    assert out["weights"] == str(root / "weights/best.pt") and out["save_dirs"] == dict.fromkeys(OUTPUTS, str(root))
    results = rows(root / "results.csv")
    assert [r["epoch"] for r in results] == [1, 2]
    losses = ["seg/ce_loss", "seg/dice_loss", "det/box_loss", "det/cls_loss", "det/dfl_loss", "cls/loss"]
    metrics = ["seg/mIoU", "det/mAP50(B)", "det/mAP50-95(B)", "cls/accuracy_top1"]
    keys = [f"train/{k}" for k in losses] + [f"val/{k}" for k in losses] + [f"metrics/{k}" for k in metrics]
    assert not [k for k in keys if k not in results[0]]
    # cfg/joint.yaml's task_share 0.5: with one step an epoch here, detection and classification come every other
    # step, so in the second epoch only (segmentation in both)
    assert "1 steps an epoch, each with a batch of every task, det in 50% of them, cls in 50% of them" in log
    assert [(r["train/det/box_loss"] > 0, r["train/cls/loss"] > 0, r["train/seg/ce_loss"] > 0) for r in results] == [
        (False, False, True), (True, True, True)
    ]  # fmt: skip
    diagnostics = rows(root / "diagnostics.csv")
    assert [r["epoch"] for r in diagnostics] == [1, 2] and (root / "diagnostics.png").is_file()
    for t in OUTPUTS:
        assert diagnostics[1][f"weight/{t}"] == 1.0 and diagnostics[1][f"loss/{t}"] > 0
        assert diagnostics[1][f"grad_norm/{t}"] > 0
    assert all(-1 <= diagnostics[1][f"cos/{p}"] <= 1 for p in ("seg-det", "seg-cls", "det-cls"))
    assert "seg/ce" in log and "det/box" in log and "cls/loss" in log  # the progress bar's header: every task
    assert all((root / t).is_dir() for t in OUTPUTS)  # each task's validation outputs in its own folder
    model = load_checkpoint(out["weights"])[0]
    assert type(model) is UnifiedModel and not hasattr(model, "joint_step") and not hasattr(model, "loss_terms")
    assert model.task_imgsz == {"seg": 64, "det": 64, "cls": 160}  # cfg/joint.yaml's task_args: cls at 160
    scores = validate(out["weights"], synth_yaml, tmp_path, imgsz=64, batch=4, plots=False)
    assert set(scores) == set(OUTPUTS) and all(0 <= s[PRIMARY_METRIC[t]] <= 1 for t, s in scores.items())


def test_uncertainty_weights_learn_and_resume(synth_yaml, tmp_path):
    """The log-variances join the optimizer; a run killed after epoch 2 resumes them with results and diagnostics."""

    class Killed(Exception):
        pass

    def kill(trainer):
        if trainer.epoch == 1:
            raise Killed

    args = {**TINY, "epochs": 3, "lr0": 0.01, "optimizer": "AdamW", "balance": "uncertainty"}
    trainer = JointTrainer(overrides={"data": synth_yaml, "joint": True, "save_dir": str(tmp_path / "u"), **args})
    trainer.add_callback("on_model_save", kill)
    with pytest.raises(Killed):
        trainer.train()
    saved = torch.load(tmp_path / "u/weights/last.pt", weights_only=False)["balancer"]["log_vars"]
    assert saved.abs().min() > 1e-3 and torch.equal(saved, trainer.balancer.log_vars.detach())
    assert trainer.optimizer.param_groups[-1]["param_group"] == "balancer"
    assert trainer.optimizer.param_groups[-1]["weight_decay"] == 0.0
    out = workflows.train(resume=str(tmp_path / "u/weights/last.pt"))
    assert out["weights"] == str(tmp_path / "u/weights/best.pt")
    assert [r["epoch"] for r in rows(tmp_path / "u/results.csv")] == [1, 2, 3]
    weights = [r["weight/det"] for r in rows(tmp_path / "u/diagnostics.csv")]
    assert len(weights) == 3 and weights[0] == 1.0 and weights[2] < weights[1] < 1.0  # resumed, not restarted


def test_pcgrad_runs_inside_the_trainer(synth_yaml, tmp_path):
    args = {**TINY, "epochs": 1, "balance": "pcgrad", "task_sampling": "temperature"}
    trainer = JointTrainer(overrides={"data": synth_yaml, "joint": True, "save_dir": str(tmp_path / "p"), **args})
    steps = []
    trainer.add_callback("on_train_batch_end", lambda t: steps.append(t.loss.item()))
    trainer.train()
    assert trainer.balancer.kind == "gradient" and steps and all(torch.isfinite(torch.tensor(steps)))
    row = rows(tmp_path / "p/diagnostics.csv")[0]
    assert any(row[f"weight/{t}"] > 0 for t in OUTPUTS) and (tmp_path / "p/weights/best.pt").is_file()


def new_trainer(synth_yaml: str, tmp_path: Path, **overrides) -> JointTrainer:
    args = {"data": synth_yaml, "joint": True, "save_dir": str(tmp_path / "run"), **TINY, **overrides}
    return JointTrainer(overrides=args)


def test_the_joint_step_is_the_trainers_own(synth_yaml, tmp_path):
    """A step attaches nothing to the model; with balance=fixed its gradients are the plain sum's of the task losses
    (the strategies, here gradient clipping, add no loss term)."""
    trainer = new_trainer(synth_yaml, tmp_path, batch=2)
    trainer._setup_train()
    trainer._model_train()
    model = unwrap_model(trainer.model)
    drawn = next(iter(trainer.train_loader))  # one step's batches, {task: [batch]}
    assert set(drawn) == set(OUTPUTS) and [s.key for s in trainer.strategies] == ["clip_grad"]
    loss, items = trainer.model(trainer.preprocess_batch(deepcopy(drawn)))  # as Ultralytics' loop does
    loss.sum().backward()
    assert set(items) == set(trainer.loss_names) and len(trainer.loss_names) == 6
    step = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert not hasattr(model, "joint_step") and not hasattr(model, "loss_terms")
    model.zero_grad()
    losses, _ = task_losses(model, trainer.preprocess_batch(deepcopy(drawn))["batches"], trainer.tasks)
    sum(losses.values()).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert step.keys() == expected.keys() and any(n.startswith("model.0.") for n in step)  # the backbone too
    for name, grad in step.items():
        torch.testing.assert_close(grad, expected[name], msg=name)
    trainer.train_loader.close()
    trainer.test_loader.close()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"balance": "pcgard"}, r"balance=pcgard .*unknown loss-balancing method 'pcgard'; valid methods: fixed"),
        ({"task_sampling": "size"}, r"task_sampling='size' is not a sampling mode; valid modes: round_robin"),
        ({"balance_args": {"weights": {"seg": 0, "det": 0, "cls": 0}}}, r"balance=fixed .*every task weight is 0"),
        ({"balance_args": {"weights": {"det": -1}}}, r"balance=fixed .*weights.det is -1"),
        ({"balance_args": {"temp": 2}}, r"balance=fixed balance_args=\{'temp': 2\}: fixed: unknown setting 'temp'"),
        ({"task_share": {"det": 1.5}}, r"task_share \{'det': 1.5\}: .* a number in \(0, 1\]"),
        ({"task_share": {"pose": 0.5}}, r"task_share=\{'pose': 0.5\}: give a dict keyed by task \(seg, det, cls\)"),
        ({"task_args": "cls: 160"}, r"task_args='cls: 160': give a dict keyed by task"),
        ({"task_args": {"cls": {"imgsx": 96}}}, r"task_args: unknown key\(s\) \['imgsx'\] for cls"),
        ({"ewc": {"lam": 1.0}}, r"ewc: these strategies .* joint training does not support them"),
    ],
)
def test_bad_settings_fail_naming_the_key(synth_yaml, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        new_trainer(synth_yaml, tmp_path, **overrides)


def test_task_args_and_baselines(synth_yaml, tmp_path):
    parts = new_trainer(synth_yaml, tmp_path, task_args={"cls": {"imgsz": 96, "fliplr": 0.0}}).parts
    assert (parts["cls"].args.imgsz, parts["cls"].args.fliplr, parts["cls"].args.task) == (96, 0.0, "classify")
    assert (parts["det"].args.imgsz, parts["det"].args.fliplr, parts["det"].args.task) == (64, 0.5, "detect")
    stages = [{"task": "seg", "own_score": 0.5}, {"task": "det", "own_score": 0.2}]
    state = {"config": {"chain": False}, "stages": stages}
    (tmp_path / "protocol.json").write_text(json.dumps(state))
    baselines = baseline_scores(tmp_path, ["seg", "det"])
    assert multitask_fitness({"seg": 0.25, "det": 0.3}, baselines) == pytest.approx((0.5 + 1.5) / 2)
    assert multitask_fitness({"seg": 0.25, "det": 0.3}) == pytest.approx(0.275)
    with pytest.raises(ValueError, match="no non-zero single-task score for cls"):
        baseline_scores(tmp_path, ["seg", "det", "cls"])
    (tmp_path / "protocol.json").write_text(json.dumps({**state, "config": {"chain": True}}))
    with pytest.raises(ValueError, match="is a chained protocol, not single-task baselines"):
        baseline_scores(tmp_path, ["seg"])
    with pytest.raises(FileNotFoundError, match="baselines=.*: no protocol.json there"):
        new_trainer(synth_yaml, tmp_path, baselines=str(tmp_path / "absent"))


def test_bad_data_and_checkpoints_fail_naming_the_file(synth_yaml, tmp_path, monkeypatch, logged):
    no_val = write_data(synth_yaml, tmp_path / "no-val.yaml", lambda d: d["det"].pop("val"))
    with pytest.raises(RuntimeError, match=r"no-val.yaml: 'det:' has no 'val:' split"):
        new_trainer(no_val, tmp_path)
    det_only = write_data(synth_yaml, tmp_path / "det.yaml", lambda d: [d.pop("seg"), d.pop("cls")])
    monkeypatch.setattr(
        workflows.joint, "train_task", lambda task, overrides: {"task": task, "joint": overrides["joint"]}
    )
    assert workflows.train(joint=True, data=det_only, project=str(tmp_path)) == {"task": "det", "joint": False}
    assert "det.yaml has det data only; training det alone" in logged.text
    other = {**task_names(load_data_config(synth_yaml)), "det": {0: "a", 1: "b"}}  # 2 detection classes, not 3
    torch.save({"model": UnifiedModel(task_names=other, verbose=False)}, tmp_path / "other.pt")
    trainer = new_trainer(synth_yaml, tmp_path, model=str(tmp_path / "other.pt"))
    mismatch = r"other.pt: its heads do not match the class counts .*\(det 2 vs 3; model vs data\)"
    with pytest.raises(ValueError, match=mismatch):
        trainer.setup_model()
    with pytest.raises(ValueError, match="task=det does not go with it"):
        workflows.train(task="det", joint=True, data=synth_yaml)


def test_command_line_errors_are_one_line(synth_yaml, tmp_path, monkeypatch, logged, capsys):
    cfg = f"cfg={REPO / 'cfg/joint.yaml'}"
    argv = ["yolo-unified", "train", cfg, f"data={synth_yaml}", f"project={tmp_path}", "balance=pcgard"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        entrypoint()  # the console script
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in logged.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].endswith(
        "yolo-unified: balance=pcgard balance_args={}: unknown loss-balancing method 'pcgard'; valid methods: "
        "fixed, uncertainty, dwa, gradnorm, pcgrad, rlw, cagrad, imtlg, nashmtl, alignedmtl, upgrad, mgda"
    )
    assert "Traceback" not in capsys.readouterr().err


def test_tasks_key_restricts_a_joint_run(synth_yaml, tmp_path):
    trainer = new_trainer(synth_yaml, tmp_path, tasks="[det,seg]")  # as the command line gives it
    assert trainer.tasks == ["seg", "det"] and set(trainer.parts) == {"seg", "det"}
    shares = {"det": 0.5, "cls": 0.5}  # cfg/joint.yaml's: the share of cls, which this run does not train, is ignored
    assert new_trainer(synth_yaml, tmp_path, tasks="seg,det", task_share=shares).shares == {"seg": 1.0, "det": 0.5}
    with pytest.raises(ValueError, match=r"tasks=\['seg', 'depth'\]: .* has no depth data \(it has seg, det, cls\)"):
        new_trainer(synth_yaml, tmp_path, tasks=["seg", "depth"])


def test_a_recipe_for_every_task_runs_on_a_subset(synth_yaml, tmp_path, logged):
    """cfg/joint.yaml's per-task keys name cls; on seg and det data its entries are left out with one info line, and
    the dict-valued keys come from the command line as they do from the file."""
    keys = parse_tokens(["tasks=seg,det", "task_share={det: 0.5, cls: 0.5}", "task_args={cls: {imgsz: 96}}"])
    trainer = new_trainer(synth_yaml, tmp_path, **keys)
    assert set(trainer.parts) == {"seg", "det"} and trainer.shares == {"seg": 1.0, "det": 0.5}
    assert "task_args: cls left out (this run trains seg, det)" in logged.text
    assert "task_share: cls left out (this run trains seg, det)" in logged.text
    with pytest.raises(SyntaxError, match=r"task_share=\{det: 0.5 is not a YAML mapping"):
        parse_tokens(["task_share={det: 0.5"])


def test_protocol_with_a_joint_stage_then_a_sequential_one(synth_yaml, tmp_path):
    """seg and det learned together, then cls with feature distillation: the report treats seg and det as finished
    after stage 1 and measures their forgetting after stage 2."""
    stages = [
        {"tasks": ["seg", "det"], "epochs": 2, "balance": "uncertainty"},
        {"task": "cls", "epochs": 1, "imgsz": 32, "lr_mult": {"backbone": 0.1, "neck": 0.1, "tower": 0.1, "cls": 10.0},
         "feat_distill": {"weight": 1.0}},
    ]  # fmt: skip
    state = workflows.train(stages=stages, data=synth_yaml, project=str(tmp_path), name="js", **TINY)
    first, second = state["stages"]
    assert (first["task"], first["tasks"], set(first["own_scores"])) == ("seg+det", ["seg", "det"], {"seg", "det"})
    assert first["own_scores"]["det"] == first["scores"]["det"]["metrics/mAP50(B)"]
    assert second["task"] == "cls" and set(second["scores"]) == {"seg", "det", "cls"}
    root = tmp_path / "js"
    assert [r["epoch"] for r in rows(root / "1-seg+det/results.csv")] == [1, 2]
    assert "train/feat_dist" in rows(root / "2-cls/results.csv")[0]
    md = (root / "forgetting.md").read_text()
    assert "| 1 (seg+det) |" in md and "| 2 (cls) |" in md
    forgetting_row = next(line for line in md.splitlines() if line.startswith("| forgetting"))
    assert forgetting_row.count("PASS") + forgetting_row.count("FAIL") == 3  # seg and det after stage 1, cls its own
    assert (root / "forgetting_heatmap.png").is_file() and (root / "weights/best.pt").is_file()
    final = load_checkpoint(root / "weights/best.pt")[0]  # each task's image size, the largest to deploy at
    assert final.task_imgsz == {"seg": 64, "det": 64, "cls": 32} and task_imgsz(final) == 64
    with pytest.raises(ValueError, match="stage 1: give either task .* or tasks"):
        workflows.train(stages=[{"task": "seg", "tasks": ["det"]}], data=synth_yaml, project=str(tmp_path))
    with pytest.raises(ValueError, match=r"stage 2: tasks must name distinct tasks .* got \['cls', 'cls'\]"):
        workflows.train(stages=[stages[0], {"tasks": ["cls", "cls"]}], data=synth_yaml, project=str(tmp_path))
