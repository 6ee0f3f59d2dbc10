"""`python -m yolo_unified ...`: the same as the `yolo-unified` command."""

from yolo_unified.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
