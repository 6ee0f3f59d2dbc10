"""The old home of ``UnifiedYOLO``, kept while yolo_unified/cli.py and benchmarks/ import it from here: import it
from ``yolo_unified`` (or ``yolo_unified.model``); this module goes once they do."""

from yolo_unified.model import UnifiedYOLO

__all__ = ("UnifiedYOLO",)
