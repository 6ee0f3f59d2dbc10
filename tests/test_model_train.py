"""Training from Python as Ultralytics users write it: ``UnifiedYOLO(...).train(...)`` runs the command line's code."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from ultralytics.utils import ASSETS

from yolo_unified import UnifiedYOLO
from yolo_unified.cli import run
from yolo_unified.nn import UnifiedModel

TINY = {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False}
RUN_KEYS = {"save_dir", "model"}  # where two runs of the same protocol differ (model: the previous stage's)


def files(root: Path) -> list[str]:
    """Every file of a run, relative to its folder."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def stage_args(root: Path, stage: str) -> dict:
    """A stage's training arguments as Ultralytics saved them, without the keys that name the run."""
    args = yaml.safe_load((root / stage / "args.yaml").read_text())
    return {k: v for k, v in args.items() if k not in RUN_KEYS}


@pytest.fixture(scope="module")
def runs(synth_yaml, tmp_path_factory) -> tuple[Path, UnifiedYOLO, dict]:
    """cfg/seq.yaml at a tiny size, trained once from the command line and once from Python, into `project`."""
    project = tmp_path_factory.mktemp("runs")
    common = {"cfg": str(REPO / "cfg/seq.yaml"), "data": synth_yaml, "project": str(project), **TINY}
    run(["train", *(f"{k}={v}" for k, v in common.items()), "name=cli"])
    model = UnifiedYOLO("yolov8n-unified.yaml")
    assert isinstance(model.model, UnifiedModel) and model.task == "unified"
    return project, model, model.train(**common, name="py")


def test_python_train_runs_the_command_line_protocol(runs):
    project, model, state = runs
    cli, py = project / "cli", project / "py"
    assert files(py) == files(cli) and {"1-seg", "2-det", "3-cls", "forgetting.md"} <= {p.name for p in py.iterdir()}
    for stage in ("1-seg", "2-det", "3-cls"):
        assert stage_args(py, stage) == stage_args(cli, stage), stage
        assert stage_args(py, stage)["epochs"] == 1 and stage_args(py, stage)["imgsz"] == 64  # train()'s keys won
    config = json.loads((py / "protocol.json").read_text())["config"]
    assert config == json.loads((cli / "protocol.json").read_text())["config"]  # stages, common keys, chain
    assert [s["task"] for s in state["stages"]] == ["seg", "det", "cls"]
    assert Path(model.ckpt_path) == Path(state["weights"]) == py / "weights/best.pt"


def test_the_trained_object_predicts_and_trains_on(runs, synth_yaml, tmp_path):
    _, model, state = runs
    r = model.predict(ASSETS / "bus.jpg", imgsz=64, verbose=False)[0]
    assert tuple(r.semantic_mask.data.shape) == r.orig_shape and len(r.probs.data) == len(r.task_names["cls"])
    out = UnifiedYOLO(state["weights"]).train(task="cls", data=synth_yaml, project=str(tmp_path), name="cls", **TINY)
    assert list(out["save_dirs"]) == ["cls"]  # one task, continued from the protocol's weights
    assert yaml.safe_load((tmp_path / "cls/args.yaml").read_text())["model"] == state["weights"]


def test_unknown_keys_fail_as_on_the_command_line(tmp_path):
    with pytest.raises(SyntaxError, match=r"'epochz' \(did you mean epochs\?\)"):
        UnifiedYOLO("yolov8n-unified.yaml").train(epochz=3, project=str(tmp_path))
    assert not any(tmp_path.iterdir())
