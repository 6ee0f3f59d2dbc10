"""Shared test setup: offline Ultralytics with a private config dir, and the small synthetic dataset."""

import os
import shutil
import tempfile
from pathlib import Path

_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="yolo-unified-cfg-"))
os.environ["YOLO_OFFLINE"] = "true"
os.environ["YOLO_CONFIG_DIR"] = str(_CONFIG_DIR)
(_CONFIG_DIR / "Ultralytics").mkdir(parents=True, exist_ok=True)
import matplotlib  # noqa: E402  (after the environment above)

shutil.copy(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf", _CONFIG_DIR / "Ultralytics/Arial.ttf")

import logging  # noqa: E402

import pytest  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HW2 = (REPO / "../shared/data/hw2").resolve()
needs_hw2 = pytest.mark.skipif(not HW2.is_dir(), reason=f"real HW2 data not found at {HW2}")


@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> str:
    """A tiny copy of the built-in synthetic three-task dataset (8 train / 4 val images per task, 64 px)."""
    from yolo_unified.data.synthetic import make_synthetic

    return str(make_synthetic(tmp_path_factory.mktemp("data") / "synth", n_train=8, n_val=4, imgsz=64, seed=0))


@pytest.fixture
def logged(caplog):
    """caplog that sees Ultralytics' LOGGER, which does not propagate to the root logger caplog listens on."""
    level = LOGGER.level
    LOGGER.addHandler(caplog.handler)
    LOGGER.setLevel(logging.INFO)  # also when YOLO_VERBOSE=False silences it
    yield caplog
    LOGGER.removeHandler(caplog.handler)
    LOGGER.setLevel(level)
