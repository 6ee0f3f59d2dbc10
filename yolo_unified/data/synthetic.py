"""The built-in default data: small synthetic images of shapes and patterns for all three tasks, made in seconds.

Detection (circles, rectangles, triangles), segmentation (the same shapes as masks, with 255 ignore borders) and
classification (which shape an image shows), in `LAYOUT`: the tasks see the same kind of objects, so what one task
learns helps the next."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from ultralytics.utils import LOGGER, TQDM

from yolo_unified.data.config import derived_file
from yolo_unified.data.layout import IGNORE, LAYOUT, check_own_yaml, publish_yaml, write_data_yaml
from yolo_unified.files import OutputFolder, manifest_files, read_manifest

DET_NAMES = ["circle", "rectangle", "triangle"]
SEG_NAMES = ["background", *DET_NAMES]
CLS_NAMES = DET_NAMES  # sorted, as Ultralytics numbers class folders
MANIFEST = "synthetic.json"  # the folder's manifest (yolo_unified.files): its parameters and files, written last
GENERATOR_VERSION = 2  # part of the manifest's parameters: bump it when the images change, to regenerate old copies
JPEG_QUALITY = 95
SHAPE_SCALE = (0.25, 0.5)  # detection and segmentation shapes: width and height as a share of the image side
SHAPES = 2  # per detection or segmentation image (fewer when the next finds no free place)
CLS_SCALE = (0.35, 0.6)  # the shape a classification image shows


def _colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A random saturated BGR colour from the hue range of class `cls` (reds, greens, blues)."""
    hue = rng.uniform(0, 40) + 60 * cls  # OpenCV hue: 0-180
    hsv = np.array([[[hue, rng.uniform(200, 255), rng.uniform(170, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _paint(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """The paint of a shape of class `cls`, as a full image: diagonal stripes for a circle, horizontal or vertical
    stripes for a rectangle, a checkerboard for a triangle, in two shades of a random colour with a random period and
    phase. The texture tells the classes apart where a shape is partly hidden."""
    colour = _colour(rng, cls)
    half = rng.uniform(size / 32, size / 16)  # half a period: 3-6 px at 96 px
    y, x = np.mgrid[:size, :size] + rng.uniform(0, 2 * half, (2, 1, 1))
    bx, by, diagonal = x // half % 2, y // half % 2, (x + y) // (1.4 * half) % 2
    on = {"circle": diagonal, "rectangle": bx if rng.random() < 0.5 else by, "triangle": (bx + by) % 2}[DET_NAMES[cls]]
    return np.where(on[..., None].astype(bool), colour, 0.45 * colour)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float BGR background: a gradient between two muted colours plus low-frequency blotches."""
    c0, c1 = rng.uniform(60, 200, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None] + 0.5
    blotches = cv2.resize(rng.normal(0, 20, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return c0 + (c1 - c0) * ramp[..., None] + blotches


def _shape(rng: np.random.Generator, cls: int, size: int, scale: tuple[float, float]) -> np.ndarray:
    """The boolean mask of one filled shape of class `cls` (index in DET_NAMES), `scale` of the side, fully inside."""
    w, h = (rng.uniform(*scale, 2) * size).astype(int)
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


def _paint_shapes(
    rng: np.random.Generator, img: np.ndarray, classes: list[int], scale: tuple[float, float] = SHAPE_SCALE
) -> list[tuple[int, np.ndarray]]:
    """Paint one shape per class of `classes` on `img`, apart (skipped after 20 tries); return (class, mask) pairs."""
    shapes: list[tuple[int, np.ndarray]] = []
    taken = np.zeros(img.shape[:2], np.uint8)  # the painted shapes, grown by a 2-px margin
    for cls in classes:
        for _attempt in range(20):
            m = _shape(rng, cls, img.shape[0], scale)
            if not (taken.astype(bool) & m).any():
                shapes.append((cls, m))
                taken = cv2.dilate(taken | m.astype(np.uint8), np.ones((5, 5), np.uint8))
                img[m] = _paint(rng, cls, img.shape[0])[m]
                break
    return shapes


def _random_classes(rng: np.random.Generator) -> list[int]:
    """The classes of the shapes of a detection or segmentation image: SHAPES of them, each drawn at random."""
    return [int(c) for c in rng.integers(len(DET_NAMES), size=SHAPES)]


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add fine grain to a float image and return it as uint8."""
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """An image with up to SHAPES shapes on a background, and (class, mask) of each shape."""
    img = _background(rng, size)
    shapes = _paint_shapes(rng, img, _random_classes(rng))
    return _finish(rng, img), shapes


def _boxes_text(shapes: list[tuple[int, np.ndarray]], size: int) -> str:
    """The YOLO label text of `shapes`: one tight, normalised box per shape."""
    lines = []
    for cls, m in shapes:
        ys, xs = np.nonzero(m)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        box = ((x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size)
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in box) + "\n")
    return "".join(lines)


def _class_map(shapes: list[tuple[int, np.ndarray]], size: int) -> np.ndarray:
    """The semantic mask of `shapes`: each shape's class, 0 elsewhere, a 1-px 255 ring around each (VOC's borders)."""
    mask = np.zeros((size, size), np.uint8)
    for cls, m in shapes:
        mask[m] = SEG_NAMES.index(DET_NAMES[cls])
    kernel = np.ones((3, 3), np.uint8)
    for _, m in shapes:
        mask[cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m] = IGNORE
    return mask


def shared_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, np.ndarray]:
    """An image with both labels of its shapes: (image, YOLO label text, semantic mask)."""
    img, shapes = _scene(rng, size)
    return img, _boxes_text(shapes, size), _class_map(shapes, size)


def _cls_sample(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """A classification image: a large shape of class `cls`, and in half the images a smaller one of another class."""
    img = _background(rng, size)
    _paint_shapes(rng, img, [cls], CLS_SCALE)
    if rng.random() < 0.5:
        other = (cls + int(rng.integers(1, len(DET_NAMES)))) % len(DET_NAMES)
        _paint_shapes(rng, img, [other], (SHAPE_SCALE[0] / 2, CLS_SCALE[0] / 2))  # on the large one or beside it
    return _finish(rng, img)


def _generate(dst: Path, n: dict[str, int], imgsz: int, seed: int) -> None:
    """Write the three image sets into `dst`."""

    def write(file: Path, data: bytes) -> None:
        """Write `data` to `file`, making its folder."""
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)

    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for t, task in enumerate(LAYOUT):
        for s, (split, count) in enumerate(n.items()):
            rng = np.random.default_rng([seed, t, s])  # one stream per task and split: each set stands on its own
            for i in TQDM(range(count), desc=f"synthetic {task} {split}"):
                folder = dst / LAYOUT[task][split]
                if task == "det":
                    img, shapes = _scene(rng, imgsz)
                    write(dst / "det/labels" / split / f"{i:05d}.txt", _boxes_text(shapes, imgsz).encode())
                elif task == "seg":
                    img, shapes = _scene(rng, imgsz)
                    mask = _class_map(shapes, imgsz)
                    write(
                        dst / "seg" / LAYOUT["seg"]["masks_dir"] / split / f"{i:05d}.png",
                        cv2.imencode(".png", mask)[1].tobytes(),
                    )
                else:
                    img = _cls_sample(rng, imgsz, i % len(CLS_NAMES))
                    folder /= CLS_NAMES[i % len(CLS_NAMES)]
                write(folder / f"{i:05d}.jpg", cv2.imencode(".jpg", img, jpeg)[1].tobytes())


def make_synthetic(dst: str | Path, n_train: int = 96, n_val: int = 32, imgsz: int = 96, seed: int = 0) -> Path:
    """Generate the synthetic three-task dataset at `dst` (an `OutputFolder`) unless a complete copy with these
    parameters is there: per task `n_train`/`n_val` JPEGs of `imgsz` px, deterministic for a `seed`. Returns its
    YAML."""
    dst = Path(dst)
    yaml_path = dst.parent / f"{dst.name}.yaml"
    if min(n_train, n_val) < 1 or imgsz < 32:
        raise ValueError(f"make_synthetic needs n_train, n_val >= 1 and imgsz >= 32, got {n_train}, {n_val}, {imgsz}")
    params = {"generator": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed}
    done = read_manifest(dst, MANIFEST)
    files = manifest_files(dst, MANIFEST)
    if done.get("params") == params and yaml_path.is_file() and files and all((dst / f).is_file() for f in files):
        return yaml_path
    check_own_yaml(yaml_path)
    output = OutputFolder(dst, "yolo-unified synthetic data", derived_file, MANIFEST, extra={"params": params})
    LOGGER.info(f"Generating synthetic data in {dst} ({params})")
    with output as build:
        _generate(build, {"train": n_train, "val": n_val}, imgsz, seed)
    names = {"seg": SEG_NAMES, "det": DET_NAMES, "cls": CLS_NAMES}
    publish_yaml(yaml_path, lambda draft: write_data_yaml(draft, dst, names, extra={"synthetic": params}))
    return yaml_path
