"""yolo-unified: one YOLOv8n model with one unified head for detection, semantic segmentation and classification.
Importing it changes nothing for plain Ultralytics (`yolo_unified.defaults`)."""

from ultralytics.utils import LOGGER

from yolo_unified.ultralytics_api import PINNED_ULTRALYTICS, signature_changes

__version__ = "0.1.0"

if _changes := signature_changes():  # Ultralytics' internals this package replaces (yolo_unified/ultralytics_api.py)
    LOGGER.warning(
        f"yolo-unified was written for Ultralytics {PINNED_ULTRALYTICS}; these internals it replaces differ here "
        "(reinstall with pip install -e . to get the pinned version):\n  " + "\n  ".join(_changes)
    )

from yolo_unified.model import UnifiedYOLO  # noqa: E402  (after the check above)

__all__ = ("UnifiedYOLO", "__version__")
