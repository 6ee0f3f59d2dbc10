"""A good guest: importing yolo_unified changes nothing for plain Ultralytics (results, threads, key checks), while the
package's own runs take its keys and run on its CPU threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg
from ultralytics.utils import YAML, torch_utils

import yolo_unified
from yolo_unified.data.config import load_data_config, task_data
from yolo_unified.defaults import UNIFIED_KEYS, unified_threads
from yolo_unified.models.unified.train import UnifiedDetectionTrainer
from yolo_unified.models.unified.val import UnifiedDetectionValidator
from yolo_unified.workflows.base import check_keys

PLAIN_RUN = """
import json, sys
import torch
if sys.argv[1] == "import":
    import yolo_unified
from ultralytics import YOLO
from ultralytics.utils import DEFAULT_CFG_DICT, torch_utils

model = YOLO("yolov8n.yaml")
model.train(data=sys.argv[2], project=sys.argv[3], name=sys.argv[1], epochs=1, imgsz=64, batch=4, workers=0,
            seed=0, deterministic=True, plots=False, val=True, device="cpu", verbose=False)
rows = (model.trainer.save_dir / "results.csv").read_text().splitlines()
print(json.dumps({"rows": [r.split(",")[2:] for r in rows], "threads": torch.get_num_threads(),
                  "ultralytics_threads": torch_utils.NUM_THREADS, "keys": sorted(DEFAULT_CFG_DICT)}))
"""  # results.csv without its epoch time


def test_a_plain_ultralytics_run_is_the_same_with_and_without_the_import(synth_yaml, tmp_path):
    det = task_data(load_data_config(synth_yaml), "det", splits=("train", "val"))
    data = tmp_path / "det.yaml"
    YAML.save(data, {k: det[k] for k in ("train", "val", "names")})
    env = {**os.environ, "PYTHONPATH": str(Path(yolo_unified.__file__).parents[1])}  # this yolo_unified
    runs = {}
    for name in ("plain", "import"):
        done = subprocess.run([sys.executable, "-c", PLAIN_RUN, name, str(data), str(tmp_path / "runs")],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["import"]["rows"][0][0] == "train/box_loss" and len(runs["import"]["rows"]) == 2
    assert runs["import"] == runs["plain"]


def test_ultralytics_still_rejects_the_package_keys():
    with pytest.raises(SyntaxError, match="'ewc' is not a valid YOLO argument"):
        get_cfg(overrides={"ewc": {"lam": 1.0}})
    assert not set(UNIFIED_KEYS) & set(DEFAULT_CFG_DICT)


def test_the_unified_trainers_and_checks_take_every_unified_key(synth_yaml, tmp_path):
    check_keys(dict(UNIFIED_KEYS))  # the command line and UnifiedYOLO's check
    trainer = UnifiedDetectionTrainer(overrides={"data": synth_yaml, "save_dir": str(tmp_path), **UNIFIED_KEYS})
    assert {k: getattr(trainer.args, k) for k in UNIFIED_KEYS} == UNIFIED_KEYS
    validator = UnifiedDetectionValidator(args=vars(trainer.args))  # a validator takes them and leaves them out
    assert not set(UNIFIED_KEYS) & set(vars(validator.args)) and validator.args.data == synth_yaml
    with pytest.raises(SyntaxError, match="'lwf_typo' is not a valid YOLO argument"):
        UnifiedDetectionValidator(args={"lwf_typo": 1})  # any other key is still Ultralytics' to check
    with pytest.raises(SyntaxError, match="unknown key"):
        check_keys({"lwf_typo": 1})


def test_a_unified_run_uses_every_core_and_restores_ultralytics_threads(monkeypatch):
    monkeypatch.setenv("YOLO_UNIFIED_THREADS", "3")
    before = torch.get_num_threads(), torch_utils.NUM_THREADS
    with unified_threads():
        assert (torch.get_num_threads(), torch_utils.NUM_THREADS) == (3, 3)
        torch_utils.select_device("cpu")  # what Ultralytics' trainers, validators and predictor call
        assert torch.get_num_threads() == 3
    assert (torch.get_num_threads(), torch_utils.NUM_THREADS) == before
