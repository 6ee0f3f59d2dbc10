"""yolo-unified: one YOLOv8n model with one unified head for detection, semantic segmentation and classification."""

import os
from importlib.resources import files

import ultralytics.utils.torch_utils as _torch_utils
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, LOGGER, YAML

from yolo_unified.ultralytics_api import PINNED_ULTRALYTICS, signature_changes

__version__ = "0.1.0"

# Our settings (documented in cfg/default.yaml) join Ultralytics' defaults, which reject unknown keys.
for _key, _value in YAML.load(files("yolo_unified.cfg") / "default.yaml").items():
    DEFAULT_CFG_DICT.setdefault(_key, _value)
    setattr(DEFAULT_CFG, _key, DEFAULT_CFG_DICT[_key])

# Ultralytics trains on CPU with cpu_count - 1 threads (1 on a 2-core machine); training is ~1.7x faster with all cores.
_torch_utils.NUM_THREADS = int(os.environ.get("YOLO_UNIFIED_THREADS", os.cpu_count() or 1))

if _changes := signature_changes():  # Ultralytics' internals this package replaces (yolo_unified/ultralytics_api.py)
    LOGGER.warning(
        f"yolo-unified was written for Ultralytics {PINNED_ULTRALYTICS}; these internals it replaces differ here "
        "(reinstall with pip install -e . to get the pinned version):\n  " + "\n  ".join(_changes)
    )

from yolo_unified.models.unified.model import UnifiedYOLO  # noqa: E402  (after the settings above)

__all__ = ("UnifiedYOLO", "__version__")
