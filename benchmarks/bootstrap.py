"""Bootstrap intervals over validation images, computed with Ultralytics' own metric classes.

A task is validated once at batch 1 while a callback keeps what each image added to the validator's statistics (the
semantic confusion matrix, the detection match statistics, the class ranking); a resample of the images then re-runs
the same metric code on the resampled records, so the point value and every resample agree with ``yolo-unified val``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.utils.metrics import DetMetrics, SemanticMetrics

from yolo_unified.common import PRIMARY_METRIC, ULTRALYTICS_TASK
from yolo_unified.defaults import unified_threads
from yolo_unified.models.unified.val import VALIDATORS, class_scores


def per_image_records(
    weights: str, data: str, task: str, imgsz: int, save_dir: Path, validator_class: type | None = None
) -> tuple[float, list, Any]:
    """Validate `task` of `weights` at batch 1; return the score, one record per image and the validator.

    `validator_class` defaults to the unified validator of the task (`data`: a multi-task YAML); an Ultralytics
    validator of the same task scores a plain Ultralytics model on its own dataset.
    """
    args = {"data": data, "task": ULTRALYTICS_TASK[task], "mode": "val", "model": weights, "imgsz": imgsz, "batch": 1}
    validator_class = validator_class or VALIDATORS[task]
    validator = validator_class(save_dir=save_dir, args={**args, "plots": False, "verbose": False})
    records: list = []
    last: list[torch.Tensor | None] = [None]

    def keep(v) -> None:
        if task == "seg":  # what this image added to the confusion matrix
            matrix = v.metrics.matrix.detach().cpu().clone()
            records.append(matrix - last[0] if last[0] is not None else matrix)
            last[0] = matrix
        elif task == "det":
            records.append({k: v.metrics.stats[k][-1] for k in v.metrics.stats})
        else:
            records.append((v.pred[-1][0].clone(), v.targets[-1][0].clone()))

    validator.add_callback("on_val_batch_end", keep)
    with unified_threads():  # as the unified runs it is compared with
        stats = validator()
    return float(stats[PRIMARY_METRIC[task]]), records, validator


def metrics_of(task: str, records: list, names: dict[int, str]) -> SemanticMetrics | DetMetrics:
    """Ultralytics' metrics of segmentation or detection, processed on a set of per-image records."""
    if task == "seg":
        metrics = SemanticMetrics(names)
        metrics.matrix = torch.stack(records).sum(0)
    else:
        metrics = DetMetrics(names)
        metrics.stats = {k: [r[k] for r in records] for k in records[0]}
    metrics.process()
    return metrics


def score(task: str, records: list, names: dict[int, str]) -> float:
    """The task's primary score (mIoU, mAP50, top-1) of a set of per-image records."""
    if task == "seg":
        return metrics_of(task, records, names)._miou
    if task == "det":
        return float(metrics_of(task, records, names).box.map50)
    return float(np.mean([int(pred[0] == target) for pred, target in records]))


def record_class_scores(task: str, records: list, names: dict[int, str]) -> dict[str, float]:
    """Each class's score of a set of per-image records by name, for the classes they label, computed as the unified
    validators' ``per_class`` computes it (`class_scores`): IoU (background too), mAP50, top-1 recall."""
    if task in ("seg", "det"):
        return class_scores(task, metrics_of(task, records, names), names)
    top1, targets = torch.tensor([int(pred[0]) for pred, _ in records]), torch.tensor([int(t) for _, t in records])
    return class_scores(task, (top1, targets), names)


def background_miou(records: list[torch.Tensor], names: dict[int, str]) -> float:
    """mIoU of predicting background everywhere, from the ground truth in the per-image confusion matrices."""
    trivial = torch.zeros_like(records[0])
    trivial[:, 0] = torch.stack(records).sum(0).sum(1)
    return score("seg", [trivial], names)


def record_key(record: Any) -> bytes:
    """A byte string that identifies a per-image record by its content (tensors, arrays, dicts and tuples of them)."""
    if isinstance(record, dict):
        return b"|".join(k.encode() + b"=" + record_key(record[k]) for k in sorted(record))
    if isinstance(record, (tuple, list)):
        return b"|".join(record_key(r) for r in record)
    array = record.cpu().numpy() if isinstance(record, torch.Tensor) else np.asarray(record)
    return f"{array.dtype}{array.shape}".encode() + array.tobytes()


def interval(
    task: str, records: list, names: dict[int, str], n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the score over resamples (with replacement) of the validation images.

    The records are put in an order given by their content first: validators may visit the images in a different
    order in every process (Ultralytics' classification val loader shuffles), and the same seed must give the same
    resamples.
    """
    return percentiles([score(task, sample, names) for sample in resamples(records, n, seed)], level)


def resamples(records: list, n: int, seed: int = 0) -> Iterator[list]:
    """`n` resamples (with replacement, of the same size) of the per-image records, the same for the same seed and
    records in any order (they are sorted by content first, see `interval`)."""
    records = sorted(records, key=record_key)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield [records[i] for i in rng.integers(0, len(records), len(records))]


def percentiles(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values."""
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrapped(
    weights: str,
    data: str,
    task: str,
    imgsz: int,
    names: dict[int, str],
    n: int,
    save_dir: Path,
    validator_class: type | None = None,
) -> dict[str, Any]:
    """A task's score with its 95% bootstrap interval (and the all-background mIoU for segmentation)."""
    value, records, _ = per_image_records(weights, data, task, imgsz, save_dir, validator_class)
    lo, hi = interval(task, records, names, n=n)
    out = {"value": value, "ci95": [lo, hi], "n_images": len(records)}
    if task == "seg":
        out["all_background"] = background_miou(records, names)
    return out
