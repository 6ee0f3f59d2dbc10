"""The sequential protocol: the default cfg at a tiny size, the report, resume after a kill, NaN handling."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yolo_unified import workflows
from yolo_unified.common import MEMORY_FILE, MEMORY_KEY
from yolo_unified.continual import StageContext, Strategy, build_strategies
from yolo_unified.defaults import unified_cfg
from yolo_unified.files import UnreadableFile
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.workflows import protocol as workflows_protocol
from yolo_unified.workflows.base import check_keys, stage_memory
from yolo_unified.workflows.protocol import Protocol, check_stage_tasks, read_state, write_state
from yolo_unified.workflows.report import run_summary, write_report

TINY = {"imgsz": 64, "batch": 4, "workers": 0, "plots": False}


def tiny_protocol(epochs: int = 1) -> dict:
    """cfg/seq.yaml with every stage shortened to `epochs` at 64 px."""
    cfg = yaml.safe_load((REPO / "cfg/seq.yaml").read_text())
    cfg.update(TINY)
    for stage in cfg["stages"]:
        stage.update(TINY, epochs=epochs)
        if isinstance(stage.get("ewc"), dict):
            stage["ewc"]["samples"] = 4
    return cfg


@pytest.fixture(scope="module")
def protocol_run(synth_yaml, tmp_path_factory):
    root = tmp_path_factory.mktemp("proto")
    cfg = tiny_protocol()
    state = workflows.train(**{**cfg, "data": synth_yaml, "project": str(root), "name": "seq"})
    return root / "seq", state


def test_default_protocol_runs_every_stage_and_writes_the_report(protocol_run):
    root, state = protocol_run
    assert [s["task"] for s in state["stages"]] == ["seg", "det", "cls"]
    for f in ("forgetting.csv", "forgetting.md", "metrics_across_stages.png", "forgetting_heatmap.png",
              "training_curves.png", "protocol.json"):  # fmt: skip
        assert (root / f).is_file(), f
    assert set(state["stages"][-1]["scores"]) == {"seg", "det", "cls"}  # every learned task evaluated at the end
    md = (root / "forgetting.md").read_text()
    assert "| forgetting |" in md and ("PASS" in md or "FAIL" in md)
    for s in state["stages"]:  # each checkpoint carries the strategies' memory (Fisher, anchors, replay)
        assert MEMORY_KEY in torch.load(s["weights"], weights_only=False)
        assert not (Path(s["weights"]).parent / MEMORY_FILE).exists()
    memory = stage_memory(state["stages"][-1]["weights"])  # stage 1's images, and stages 2 and 3's
    assert set(memory) == {"replay", "replay_of"} and set(memory["replay"]) == {"seg", "det", "cls"}
    assert memory["replay_of"] == {t: 8 for t in ("seg", "det", "cls")} and len(memory["replay"]["det"]) == 1  # 10%
    final = root / "weights/best.pt"  # the final model beside the report: the last stage's weights and memory
    ckpt, last = (
        torch.load(f, weights_only=False)["model"].state_dict() for f in (final, state["stages"][-1]["weights"])
    )
    assert ckpt.keys() == last.keys() and all(torch.equal(ckpt[k], last[k]) for k in ckpt)
    assert stage_memory(str(final)).keys() == memory.keys()  # a protocol started from it goes on with its memory


def test_resume_after_a_kill_finishes_every_stage(synth_yaml, tmp_path):
    cfg = tiny_protocol(epochs=4)
    cfg_file = tmp_path / "seq.yaml"
    cfg_file.write_text(yaml.safe_dump({**cfg, "data": synth_yaml, "project": str(tmp_path), "name": "seq"}))
    cmd = [str(Path(sys.executable).parent / "yolo-unified"), "train", f"cfg={cfg_file}"]  # the installed command
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    root, stage2 = tmp_path / "seq", tmp_path / "seq/2-det/weights"
    deadline = time.time() + 240
    while not (stage2 / "last.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (stage2 / "last.pt").is_file() and not (stage2 / ".trained").is_file(), "not killed in the middle of stage 2"
    assert len(json.loads((root / "protocol.json").read_text())["stages"]) == 1
    torch.load(stage2 / "last.pt", weights_only=False)  # the checkpoint the kill left is whole

    state = workflows.train(**{**cfg, "resume": str(root)})  # as `yolo-unified train cfg=... resume=<run>`: no data=
    assert [s["task"] for s in state["stages"]] == ["seg", "det", "cls"]
    for stage in ("2-det", "3-cls"):  # the run's own settings, not the built-in data's defaults
        args = yaml.safe_load((root / stage / "args.yaml").read_text())
        assert args["data"] == synth_yaml and args["imgsz"] == TINY["imgsz"], (stage, args["data"], args["imgsz"])
    assert all(Path(s["weights"]).is_file() for s in state["stages"])
    assert set(stage_memory(state["stages"][1]["weights"])["replay"]) == {"seg", "det"}  # stage 1's, and its own
    rows = (root / "2-det/results.csv").read_text().strip().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == [1, 2, 3, 4]  # resumed, not restarted
    assert (root / "forgetting.md").is_file()


def test_a_moved_run_folder_keeps_its_weights_memory_and_teacher(protocol_run, tmp_path):
    root, state = protocol_run
    recorded = json.loads((root / "protocol.json").read_text())
    assert recorded["paths"] == "relative to this folder"
    assert [s["weights"] for s in recorded["stages"]] == [f"{i}-{t}/weights/best.pt" for i, t in ((1, "seg"),
                                                          (2, "det"), (3, "cls"))]  # fmt: skip
    moved = tmp_path / "elsewhere" / "seq"
    shutil.copytree(root, moved)
    config = read_state(moved)["config"]
    protocol = Protocol(config["stages"], moved, config["common"], config["chain"], config["baselines"])
    protocol.state["stages"] = protocol.state["stages"][:2]  # as before stage 3
    context = protocol.stage_context(2)
    assert context.prev_weights == str(moved / "2-det/weights/best.pt")  # the teacher of stage 3, in the moved run
    assert set(context.memory) == {"replay", "replay_of"} and context.teacher(torch.device("cpu")) is not None


def test_a_protocol_json_with_absolute_paths_is_still_read(tmp_path, monkeypatch):
    stage = {"task": "seg", "weights": "/old/run/1-seg/weights/best.pt", "save_dir": "/old/run/1-seg"}
    (tmp_path / "protocol.json").write_text(json.dumps({"stages": [stage]}))  # written before paths were relative
    assert read_state(tmp_path)["stages"] == [stage]
    monkeypatch.chdir(tmp_path.parent)
    kept_none = {"task": "cls", "weights": "start.pt"}  # a stage that kept no weights: the model given, from the cwd
    write_state(tmp_path, {"stages": [stage, {"task": "det", "weights": str(tmp_path / "2-det/weights/best.pt")},
                                      kept_none]})  # fmt: skip
    assert [s["weights"] for s in json.loads((tmp_path / "protocol.json").read_text())["stages"]] == [
        "/old/run/1-seg/weights/best.pt", "2-det/weights/best.pt", str(tmp_path.parent / "start.pt")]  # fmt: skip
    assert [s["weights"] for s in read_state(tmp_path)["stages"]][1:] == [
        str(tmp_path / "2-det/weights/best.pt"), str(tmp_path.parent / "start.pt")]  # fmt: skip


def test_a_truncated_stage_checkpoint_stops_the_resumed_protocol_naming_it(protocol_run, tmp_path):
    moved = tmp_path / "seq"
    shutil.copytree(protocol_run[0], moved)
    shutil.rmtree(moved / "3-cls")  # stage 3 not started yet: it will start from stage 2's best.pt
    state = read_state(moved)
    write_state(moved, {**state, "stages": state["stages"][:2]})
    best = moved / "2-det/weights/best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(UnreadableFile, match=f"{best} is unreadable: truncated or damaged"):
        workflows.train(resume=str(moved))
    (moved / "protocol.json").write_text('{"stages": [')
    with pytest.raises(UnreadableFile, match=f"{moved / 'protocol.json'} is not valid JSON .* truncated"):
        workflows.train(resume=str(moved))


class Poison(Strategy):
    """Makes the loss NaN from the second epoch on."""

    def loss(self, model, preds, batch):
        bad = torch.tensor(float("nan") if self.trainer.epoch >= 1 else 0.0)
        return bad, {"poison": bad}


def test_nan_loss_stops_the_stage_and_keeps_the_good_weights(synth_yaml, tmp_path):
    trainer = TRAINERS["det"](overrides={**TINY, "data": synth_yaml, "epochs": 4, "save_dir": str(tmp_path / "det")})
    poison = Poison(True, StageContext(index=0, task="det"))
    poison.trainer = trainer

    def add_poison(t):
        unwrap_model(t.model).loss_terms = [*t.strategies, poison]

    trainer.add_callback("on_pretrain_routine_end", add_poison)
    trainer.train()
    assert trainer.nan_stopped and trainer.epoch == 1  # stopped in the first bad epoch
    ckpt = torch.load(trainer.last, weights_only=False)
    assert ckpt["train_results"]["epoch"] == [1]  # written after the good epoch 1, not overwritten after epoch 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].float().state_dict().values())  # stripped: ema -> model


def test_baselines_cfg_trains_each_task_alone_and_gives_retention(protocol_run, synth_yaml, tmp_path):
    cfg = yaml.safe_load((REPO / "cfg/baselines.yaml").read_text())
    assert cfg["chain"] is False and [s["task"] for s in cfg["stages"]] == ["seg", "det", "cls"]
    seq = yaml.safe_load((REPO / "cfg/seq.yaml").read_text())
    for base, stage in zip(cfg["stages"], seq["stages"], strict=True):  # the same budgets as the protocol
        assert base["epochs"] == stage["epochs"] and base.get("imgsz", cfg["imgsz"]) == stage.get("imgsz", seq["imgsz"])
    cfg.update(TINY)
    for stage in cfg["stages"]:
        stage.update(TINY, epochs=1)
    state = workflows.train(**{**cfg, "data": synth_yaml, "project": str(tmp_path), "name": "baselines"})
    assert [sorted(s["scores"]) for s in state["stages"]] == [["seg"], ["det"], ["cls"]]  # nothing chained
    root = protocol_run[0]
    md = write_report(root, read_state(root), baselines=str(tmp_path / "baselines"))
    assert "| retention vs single-task |" in md and "%" in md.split("retention vs single-task")[1]


def test_report_fails_a_protocol_whose_stage_kept_no_weights(tmp_path):
    seg = {"seg": {"metrics/mIoU": 0.5}}
    stage = {"weights": "w.pt", "save_dir": str(tmp_path)}
    state = {
        "stages": [
            {**stage, "task": "seg", "scores": seg, "own_score": 0.5, "kept_weights": True},
            {**stage, "task": "det", "scores": {**seg, "det": {"metrics/mAP50(B)": 0.0}}, "own_score": 0.0,
             "kept_weights": False},
        ]
    }  # fmt: skip
    md = write_report(tmp_path, state)
    assert "Overall: **FAIL**" in md and "2 (det) kept no weights" in md
    state["stages"][1]["kept_weights"] = True
    assert "Overall: **PASS**" in write_report(tmp_path, state)


def test_the_summary_gives_scores_forgetting_paths_and_next_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage = {"weights": "w.pt", "save_dir": str(tmp_path), "kept_weights": True}
    state = {
        "stages": [
            {**stage, "task": "seg", "scores": {"seg": {"metrics/mIoU": 0.80}}, "own_score": 0.80},
            {**stage, "task": "det", "own_score": 0.50,
             "scores": {"seg": {"metrics/mIoU": 0.70}, "det": {"metrics/mAP50(B)": 0.50}}},
        ]
    }  # fmt: skip
    text = run_summary(tmp_path / "runs/seq", state, 0.05, str(tmp_path / "images"), "yolo-unified train cfg=c.yaml")
    lines = [line.split() for line in text.splitlines()]
    assert "FAIL" in lines[0]
    assert ["seg", "mIoU", "0.700", "forgetting", "+12.5%", "FAIL"] in lines  # 0.10 of 0.80 lost: over 5%
    assert ["det", "mAP50", "0.500", "forgetting", "+0.0%", "PASS"] in lines
    assert "runs/seq/forgetting.md" in text and "weights  runs/seq/weights/best.pt" in text  # relative to the cwd
    assert "compare  yolo-unified train cfg=c.yaml" in text
    assert "yolo-unified predict model=runs/seq/weights/best.pt source=images" in text
    assert "yolo-unified export model=runs/seq/weights/best.pt format=onnx" in text


def test_resume_drops_results_rows_the_checkpoint_does_not_hold(synth_yaml, tmp_path, monkeypatch):
    trainer = TRAINERS["seg"](overrides={**TINY, "data": synth_yaml, "save_dir": str(tmp_path), "epochs": 5})
    trainer.csv.write_text("epoch,time,x\n1,1,0.5\n2,2,0.4\n3,3,0.3\n")  # row 3 written, then killed before last.pt
    monkeypatch.setattr(DetectionTrainer, "resume_training", lambda self, ckpt: setattr(self, "start_epoch", 2))
    trainer.resume = True
    trainer.resume_training({"epoch": 1})  # last.pt holds epochs 1-2: training restarts at the third
    assert trainer.csv.read_text() == "epoch,time,x\n1,1,0.5\n2,2,0.4\n"
    trainer.resume = False  # a fresh run leaves an existing file alone
    trainer.resume_training({"epoch": 1})
    assert trainer.csv.read_text().count("\n") == 3


def test_other_task_orders_work(synth_yaml, tmp_path):
    """det -> seg in two stages, the second with replay, EWC and LwF of the detection task."""
    stages = [
        {"task": "det", "epochs": 1, "replay": {"size": 2}, "ewc": {"samples": 4}},
        {"task": "seg", "epochs": 1, "replay": {"size": 2, "batch": 2}, "ewc": {"lam": 10.0, "samples": 4},
         "lwf": {"weight": 1.0}, "forget_stop": {"every": 1, "patience": 5}},
    ]  # fmt: skip
    state = workflows.train(stages=stages, data=synth_yaml, project=str(tmp_path), name="ds", **TINY)
    assert [s["task"] for s in state["stages"]] == ["det", "seg"]
    assert set(state["stages"][-1]["scores"]) == {"det", "seg"}
    md = (tmp_path / "ds/forgetting.md").read_text()
    assert "| 2 (seg) |" in md and "top-1" in md


def test_resume_of_a_missing_run_fails_clearly(synth_yaml, tmp_path):
    cfg = tiny_protocol()
    with pytest.raises(FileNotFoundError, match="no protocol run directory"):
        workflows.train(**{**cfg, "data": synth_yaml, "resume": str(tmp_path / "not-there")})
    assert not any(tmp_path.iterdir())  # nothing was started instead


def test_a_protocol_started_from_a_model_yaml_has_no_memory_to_load():
    from yolo_unified.nn.tasks import CFG_DIR

    assert stage_memory(str(CFG_DIR / "models/yolov8n-unified.yaml")) == {}  # a YAML is not a checkpoint


def test_memory_is_read_from_the_checkpoint_else_from_a_memory_pt_beside_it(tmp_path):
    memory = {"ewc": {"fisher": {"w": torch.ones(2)}, "anchor": {"w": torch.zeros(2)}}}
    torch.save({"model": None, MEMORY_KEY: memory}, tmp_path / "best.pt")
    torch.save({"replay": {}}, tmp_path / MEMORY_FILE)  # the checkpoint's own wins
    assert torch.equal(stage_memory(str(tmp_path / "best.pt"))["ewc"]["fisher"]["w"], torch.ones(2))
    torch.save({"model": None}, tmp_path / "old.pt")  # how runs of 0.x kept it: memory.pt beside best.pt
    assert stage_memory(str(tmp_path / "old.pt")) == {"replay": {}}
    (tmp_path / MEMORY_FILE).unlink()
    assert stage_memory(str(tmp_path / "old.pt")) == {}


@pytest.mark.parametrize("name", ["seq", "seq-pretrained", "chain", "baselines"])
def test_packaged_protocols_are_valid(name):
    """Every key of the packaged protocols is a train or strategy key, every stage's strategies build."""
    cfg = yaml.safe_load((REPO / "cfg" / f"{name}.yaml").read_text())
    check_keys({k: v for k, v in cfg.items() if k != "stages"})
    for i, stage in enumerate(cfg["stages"]):
        check_stage_tasks(stage, i)
        check_keys({k: v for k, v in stage.items() if k != "task"})
        args = SimpleNamespace(**{**unified_cfg(), **cfg, **stage})
        context = StageContext(index=i, task=stage["task"], previous=["seg"] if i else [])
        assert all(isinstance(s, Strategy) for s in build_strategies(args, context))


@pytest.mark.parametrize(
    ("pretrained", "protocol"),
    [(None, "seq"), (True, "seq"), ("weights/yolov8n-cls.pt", "seq-pretrained"), ("yolov8n.pt", "seq-pretrained")],
)
def test_the_default_protocol_depends_on_pretrained_weights(pretrained, protocol, synth_yaml, monkeypatch):
    """Without stages, `train` runs cfg/seq.yaml, or cfg/seq-pretrained.yaml when pretrained= names weights."""
    ran = {}
    monkeypatch.setattr(workflows_protocol, "run_protocol", lambda stages, **cfg: ran.update(cfg, stages=stages) or {})
    workflows.train(data=synth_yaml, pretrained=pretrained, epochs=1)
    expected = yaml.safe_load((REPO / "cfg" / f"{protocol}.yaml").read_text())
    assert [s.get("lr_mult") for s in ran["stages"]] == [s.get("lr_mult") for s in expected["stages"]]
    assert all(s["epochs"] == 1 for s in ran["stages"])  # the caller's keys win over the protocol's
