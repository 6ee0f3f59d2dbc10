"""A strategy and a balancing method from one file each (tests/plugins/), registered and trained with."""

import importlib
import sys

import pytest
from ultralytics.cfg import DEFAULT_CFG_DICT

from yolo_unified import workflows
from yolo_unified.balancing import BALANCERS, register_balancer
from yolo_unified.continual import STRATEGIES, register_strategy
from yolo_unified.defaults import UNIFIED_KEYS

TINY = dict(epochs=1, imgsz=64, batch=4, workers=0, plots=False, val=False, device="cpu", exist_ok=True)


@pytest.fixture(scope="module")
def plugins() -> tuple[type, type]:
    """Import the two plugin files (registering them, as a user's import would) and give their classes; unregister
    them afterwards, so the other tests see the built-in methods only."""
    ToyPull = importlib.import_module("plugins.toy_strategy").ToyPull
    FirstLossScale = importlib.import_module("plugins.toy_balancer").FirstLossScale
    yield ToyPull, FirstLossScale
    STRATEGIES.pop(ToyPull.key), BALANCERS.pop(FirstLossScale.key), UNIFIED_KEYS.pop(ToyPull.key)
    sys.modules.pop("plugins.toy_strategy"), sys.modules.pop("plugins.toy_balancer")


def test_registration_makes_a_key_and_refuses_a_taken_one(plugins):
    ToyPull, FirstLossScale = plugins
    assert STRATEGIES["toy_pull"] is ToyPull and BALANCERS["first_loss_scale"] is FirstLossScale
    assert "toy_pull" in UNIFIED_KEYS and "toy_pull" not in DEFAULT_CFG_DICT  # a unified key, not Ultralytics'
    with pytest.raises(ValueError, match="already a train key"):
        register_strategy(type("Clash", (ToyPull,), {"key": "epochs"}))
    with pytest.raises(ValueError, match="needs a new key"):
        register_balancer(FirstLossScale)


def test_a_registered_strategy_trains_a_task(plugins, synth_yaml, tmp_path, logged):
    ToyPull = plugins[0]
    ToyPull.calls.clear()
    workflows.train(task="seg", data=synth_yaml, toy_pull={"lam": 0.01}, project=str(tmp_path), name="s", **TINY)
    assert ToyPull.calls["setup"] == 1 and ToyPull.calls["loss"] >= 2  # 8 images, batch 4: two steps
    assert "toy" in logged.text  # its term is shown beside the task loss


def test_a_registered_balancer_trains_jointly(plugins, synth_yaml, tmp_path):
    FirstLossScale = plugins[1]
    FirstLossScale.steps = 0
    out = workflows.train(
        joint=True, data=synth_yaml, balance="first_loss_scale", project=str(tmp_path), name="j", **TINY
    )
    assert FirstLossScale.steps >= 2 and out["weights"].endswith(".pt")
