"""Configuration files shipped with yolo_unified (installed as the `yolo_unified.cfg` package)."""
