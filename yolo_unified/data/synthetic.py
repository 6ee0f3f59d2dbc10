"""The built-in default data: small synthetic images of shapes and patterns for all three tasks, made in seconds.

The layout and data YAML are the ones ``prepare_hw2`` writes for the real data, with three separate image sets:
detection (circles, rectangles, triangles with tight boxes), semantic segmentation (the same shapes as masks, with
VOC-like 255 ignore borders) and classification (horizontal stripes, vertical stripes or a checkerboard).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from ultralytics.utils import LOGGER, TQDM

from yolo_unified.data.prepare import IGNORE, LAYOUT, write_data_yaml

DET_NAMES = ["circle", "rectangle", "triangle"]
SEG_NAMES = ["background", *DET_NAMES]
CLS_NAMES = ["checker", "stripes_h", "stripes_v"]  # sorted, as Ultralytics numbers class folders
MANIFEST = "synthetic.json"  # written last: its parameters and file list say the dataset is complete
GENERATOR_VERSION = 1  # part of the manifest's parameters: bump it when the images change, to regenerate old copies
JPEG_QUALITY = 95


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated, bright BGR colour."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(200, 255), rng.uniform(170, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float BGR background: a gradient between two muted colours plus low-frequency blotches."""
    c0, c1 = rng.uniform(60, 200, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None] + 0.5
    blotches = cv2.resize(rng.normal(0, 20, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return c0 + (c1 - c0) * ramp[..., None] + blotches


def _shape(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """The boolean mask of one filled shape of class `cls` (index in DET_NAMES), 15-45% of the side, fully inside."""
    w, h = (rng.uniform(0.15, 0.45, 2) * size).astype(int)
    if DET_NAMES[cls] == "circle":
        h = w
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    m = np.zeros((size, size), np.uint8)
    if DET_NAMES[cls] == "circle":
        r = (w - 1) // 2
        cv2.circle(m, (x0 + r, y0 + r), r, 1, -1)
    elif DET_NAMES[cls] == "rectangle":
        cv2.rectangle(m, (x0, y0), (x0 + w - 1, y0 + h - 1), 1, -1)
    else:  # triangle: base and apex in the unit box, then flipped and/or transposed for one of four orientations
        pts = np.array([[0, 1], [1, 1], [rng.uniform(0.1, 0.9), 0]])
        if rng.random() < 0.5:
            pts[:, 1] = 1 - pts[:, 1]
        if rng.random() < 0.5:
            pts = pts[:, ::-1]
        cv2.fillPoly(m, [np.round(pts * [w - 1, h - 1] + [x0, y0]).astype(np.int32)], 1)
    return m.astype(bool)


def _paint_shapes(rng: np.random.Generator, img: np.ndarray, n: int) -> list[tuple[int, np.ndarray]]:
    """Paint up to `n` shapes on `img`, each left at least half visible; return (class, visible mask) per shape."""
    shapes: list[tuple[int, np.ndarray, int]] = []  # class, visible mask, full area
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(len(DET_NAMES)))
            m = _shape(rng, cls, img.shape[0])
            if all(2 * (v & ~m).sum() >= area for _, v, area in shapes):
                shapes = [(c, v & ~m, area) for c, v, area in shapes] + [(cls, m, int(m.sum()))]
                img[m] = _colour(rng)
                break
    return [(c, v) for c, v, _ in shapes]


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add fine grain to a float image and return it as uint8."""
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _det_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A detection image with 1-3 shapes and its YOLO label text (tight boxes of the visible pixels)."""
    img = _background(rng, size)
    lines = []
    for cls, vis in _paint_shapes(rng, img, int(rng.integers(1, 4))):
        ys, xs = np.nonzero(vis)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        box = ((x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size)
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in box) + "\n")
    return _finish(rng, img), "".join(lines)


def _seg_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A segmentation image with 1-3 shapes and its mask: class of the top-most shape, 0 elsewhere, 255 borders."""
    img = _background(rng, size)
    shapes = _paint_shapes(rng, img, int(rng.integers(1, 4)))
    mask = np.zeros((size, size), np.uint8)
    for cls, vis in shapes:
        mask[vis] = SEG_NAMES.index(DET_NAMES[cls])
    kernel = np.ones((3, 3), np.uint8)
    for _, vis in shapes:  # a 1-px ignore ring around each visible region, like VOC's void object borders
        mask[cv2.dilate(vis.astype(np.uint8), kernel).astype(bool) & ~vis] = IGNORE
    return _finish(rng, img), mask


def _cls_sample(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """A classification image: class `cls`'s pattern in random colours, period and phase, with 0-2 distractors."""
    period = rng.uniform(size / 12, size / 4)
    y, x = np.mgrid[:size, :size]
    px, py = rng.uniform(0, period, 2)
    bx, by = ((x + px) // (period / 2)) % 2, ((y + py) // (period / 2)) % 2
    on = {"checker": (bx + by) % 2, "stripes_h": by, "stripes_v": bx}[CLS_NAMES[cls]].astype(bool)
    light, dark = _colour(rng), 0.35 * _colour(rng)
    img = 0.8 * np.where(on[..., None], light, dark) + 0.2 * _background(rng, size)
    _paint_shapes(rng, img, int(rng.integers(0, 3)))
    return _finish(rng, img)


def _generate(dst: Path, n: dict[str, int], imgsz: int, seed: int) -> list[str]:
    """Write the three image sets into `dst`; return the written files relative to `dst`."""
    written: list[str] = []

    def write(file: Path, data: bytes) -> None:
        """Write `data` to `file` and record it."""
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        written.append(file.relative_to(dst).as_posix())

    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for t, task in enumerate(LAYOUT):
        for s, (split, count) in enumerate(n.items()):
            rng = np.random.default_rng([seed, t, s])  # one stream per task and split: each set stands on its own
            for i in TQDM(range(count), desc=f"synthetic {task} {split}"):
                folder = dst / LAYOUT[task][split]
                if task == "det":
                    img, label = _det_sample(rng, imgsz)
                    write(dst / "det/labels" / split / f"{i:05d}.txt", label.encode())
                elif task == "seg":
                    img, mask = _seg_sample(rng, imgsz)
                    write(
                        dst / "seg" / LAYOUT["seg"]["masks_dir"] / split / f"{i:05d}.png",
                        cv2.imencode(".png", mask)[1].tobytes(),
                    )
                else:
                    img = _cls_sample(rng, imgsz, i % len(CLS_NAMES))
                    folder /= CLS_NAMES[i % len(CLS_NAMES)]
                write(folder / f"{i:05d}.jpg", cv2.imencode(".jpg", img, jpeg)[1].tobytes())
    return written


def make_synthetic(dst: str | Path, n_train: int = 96, n_val: int = 32, imgsz: int = 128, seed: int = 0) -> Path:
    """Generate the synthetic three-task dataset at `dst` unless a complete copy with these parameters is there.

    Each task gets its own `n_train`/`n_val` JPEG images of `imgsz` x `imgsz` px, deterministic for a `seed`.
    Returns the data YAML, ``dst.parent / f"{dst.name}.yaml"``.
    """
    dst = Path(dst)
    yaml_path = dst.parent / f"{dst.name}.yaml"
    if min(n_train, n_val) < 1 or imgsz < 32:
        raise ValueError(f"make_synthetic needs n_train, n_val >= 1 and imgsz >= 32, got {n_train}, {n_val}, {imgsz}")
    params = {"generator": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed}
    manifest = dst / MANIFEST
    try:
        done = json.loads(manifest.read_text())
    except (OSError, ValueError):
        done = {}
    if done.get("params") == params and yaml_path.is_file() and all((dst / f).is_file() for f in done["files"]):
        return yaml_path
    LOGGER.info(f"Generating synthetic data in {dst} ({params})")
    manifest.unlink(missing_ok=True)
    for task in LAYOUT:  # only our own folders: whatever else is in dst stays
        shutil.rmtree(dst / task, ignore_errors=True)
    files = _generate(dst, {"train": n_train, "val": n_val}, imgsz, seed)
    write_data_yaml(yaml_path, dst, {"seg": SEG_NAMES, "det": DET_NAMES, "cls": CLS_NAMES}, extra={"synthetic": params})
    manifest.write_text(json.dumps({"params": params, "files": files}, indent=1))
    return yaml_path
