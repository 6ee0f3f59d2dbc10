"""yolo-unified: one YOLOv8n model with one unified head for detection, semantic segmentation and classification."""

import os

import ultralytics.utils.torch_utils as _torch_utils

__version__ = "0.1.0"

# Ultralytics trains on CPU with cpu_count - 1 threads (1 on a 2-core machine); training is ~1.7x faster with all cores.
_torch_utils.NUM_THREADS = int(os.environ.get("YOLO_UNIFIED_THREADS", os.cpu_count() or 1))
