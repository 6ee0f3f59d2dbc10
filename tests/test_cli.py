"""The command line: Ultralytics-style key=value parsing, cfg= files, what train runs, clear errors, help, version."""

import json
import subprocess
import sys

import pytest
import torch
from ultralytics.utils import YAML

import yolo_unified
from yolo_unified import UnifiedYOLO
from yolo_unified.cli import entrypoint, parse_tokens, run
from yolo_unified.data.config import load_data_config
from yolo_unified.nn import UnifiedModel
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows import base as workflows_base
from yolo_unified.workflows import protocol
from yolo_unified.workflows.base import cfg_file

TINY = ["epochs=1", "imgsz=64", "batch=4", "workers=0", "plots=False"]


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script in a fresh process (its log, Ultralytics' LOGGER, goes to stdout)."""
    return subprocess.run(["yolo-unified", *args], capture_output=True, text=True, timeout=120)


def message(res: subprocess.CompletedProcess) -> str:
    return res.stdout + res.stderr


def test_version_and_help(capsys):
    assert cli("--version").stdout.strip() == yolo_unified.__version__  # the installed script
    run(["help"])
    out = capsys.readouterr().out
    for mode in ("train", "val", "predict", "export", "benchmark", "data prepare"):
        assert mode in out


def test_unknown_key_fails_listing_the_valid_ones():
    res = cli("train", "epochz=3")
    assert res.returncode == 2
    out = message(res)
    assert "'epochz' (did you mean epochs?)" in out and "Valid keys" in out and "forget_limit" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (("train", "epochs"), "not a key=value"),
        (("train", "cfg=missing.yaml"), "missing.yaml"),
        (("val",), "needs model="),
        (("fly",), "unknown mode"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, expected, monkeypatch, logged):
    """The entry point in this process (test_unknown_key_fails_listing_the_valid_ones runs the installed script)."""
    monkeypatch.setattr(sys, "argv", ["yolo-unified", *args])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2 and "yolo-unified: " in logged.text and expected in logged.text, logged.text


def test_input_errors_name_the_file_or_the_key_without_network_or_traceback(synth_yaml, tmp_path, monkeypatch, logged):
    model = tmp_path / "best.pt"
    torch.save({"model": UnifiedModel(verbose=False).half()}, model)
    misspelt = tmp_path / "dett.yaml"
    d = YAML.load(synth_yaml)
    YAML.save(misspelt, {**d, "path": str(load_data_config(synth_yaml)["path"]), "dett": d["det"]})
    cases = [
        (["val", "model=missing.pt"], "model=missing.pt not found"),
        (["val", f"model={model}", f"data={synth_yaml}", "task=foo"], "task=foo is not a yolo-unified task"),
        (["val", f"model={model}", f"data={misspelt}"], f"{misspelt}: unknown key 'dett:' (did you mean 'det'?)"),
        (["train", "task=det", f"data={synth_yaml}", "replay={sise: 20}", f"project={tmp_path}", "name=r"],
         "replay: unknown setting 'sise' (did you mean 'size'?)"),
    ]  # fmt: skip
    for args, expected in cases:
        logged.clear()
        monkeypatch.setattr(sys, "argv", ["yolo-unified", *args])
        with pytest.raises(SystemExit) as exit_info:
            entrypoint()
        assert exit_info.value.code == 2 and expected in logged.text, logged.text
        assert "github" not in logged.text.lower() and "Traceback" not in logged.text  # no download was tried
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "dett.yaml"]  # nothing was started


def test_command_line_keys_win_over_cfg_and_stage_keys(tmp_path, monkeypatch):
    cfg = tmp_path / "proto.yaml"
    cfg.write_text("epochs: 7\nlr0: 0.5\nstages:\n  - {task: seg, epochs: 30, lr0: 0.1}\n  - {task: det, epochs: 20}\n")
    seen = {}
    record = lambda stages, **kw: seen.update(kw, stages=stages) or {"weights": ""}  # noqa: E731
    monkeypatch.setattr(protocol, "run_protocol", record)
    monkeypatch.setattr(UnifiedYOLO, "_load", lambda self, weights, task=None: None)  # nothing was trained
    run(["train", f"cfg={cfg}", "data=some.yaml", "epochs=2"])
    assert [s["epochs"] for s in seen["stages"]] == [2, 2]  # typed on the command line: wins everywhere
    assert seen["stages"][0]["lr0"] == 0.1 and seen["lr0"] == 0.5  # from the cfg file: a stage's own value wins
    assert seen["data"] == "some.yaml"


def test_train_without_data_task_or_stages_runs_the_seq_protocol(synth_yaml, tmp_path, monkeypatch, logged):
    monkeypatch.setattr(workflows_base, "default_data", lambda: synth_yaml)  # the built-in data, tiny
    monkeypatch.chdir(tmp_path)
    state = run(["train", *TINY])  # `yolo-unified train` with tiny budgets forced over cfg/synth.yaml's
    root = tmp_path / "runs/unified/seq"
    assert state["weights"] == str(root / "weights/best.pt") and (root / "3-cls/weights/best.pt").is_file()
    config = json.loads((root / "protocol.json").read_text())["config"]
    forced = {**YAML.load(CFG_DIR / "synth.yaml"), **parse_tokens(TINY)}
    assert config["stages"] == [{**stage, **forced} for stage in YAML.load(CFG_DIR / "seq.yaml")["stages"]]
    assert config["common"]["data"] == synth_yaml
    assert f"compare  yolo-unified train cfg=cfg/chain.yaml {' '.join(TINY)}" in logged.text  # the plain chain
    assert "weights  runs/unified/seq/weights/best.pt" in logged.text  # the summary ends the run
    assert "yolo-unified predict model=runs/unified/seq/weights/best.pt source=" in logged.text


def test_task_on_the_command_line_trains_that_task_alone(synth_yaml, tmp_path):
    out = run(["train", "task=cls", f"data={synth_yaml}", f"project={tmp_path}", *TINY])
    assert out["save_dirs"] == {"cls": str(tmp_path / "train")} and not (tmp_path / "train/seg").exists()


def test_module_entry_point_matches_the_script():
    res = subprocess.run([sys.executable, "-m", "yolo_unified", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == yolo_unified.__version__


@pytest.mark.parametrize("mode", ["predict", "export", "benchmark"])
def test_modes_that_need_a_model_say_so(mode):
    with pytest.raises(SyntaxError, match="model="):
        run([mode])


def test_a_packaged_cfg_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no cfg/ here: cfg=cfg/chain.yaml (the first run prints it) is the packaged one
    assert cfg_file("cfg/chain.yaml") == CFG_DIR / "chain.yaml" and cfg_file("seq.yaml") == CFG_DIR / "seq.yaml"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/chain.yaml").write_text("epochs: 1\n")  # a file of the user's own wins
    assert cfg_file("cfg/chain.yaml").resolve() == tmp_path / "cfg/chain.yaml"
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        cfg_file("cfg/missing.yaml")
