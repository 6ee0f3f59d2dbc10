"""Checkpoints of the task trainers: written atomically, none after a NaN, resumed without repeated epochs, stripped
and validated at the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import strip_optimizer

from yolo_unified.ddp import rank_zero_alone
from yolo_unified.files import read_checkpoint, temporary_name


def strip_atomically(f: Path, **kwargs: Any) -> dict:
    """Ultralytics' ``strip_optimizer`` on `f`, through a temporary file moved over `f`."""
    tmp = temporary_name(f)
    try:
        ckpt = strip_optimizer(f, s=str(tmp), **kwargs)
        os.replace(tmp, f)
    finally:
        tmp.unlink(missing_ok=True)
    return ckpt


def drop_rows_after(csv: Path, epoch: int) -> None:
    """Drop the rows of a per-epoch CSV (first column: the 1-based epoch) whose epoch is after `epoch`."""
    if not csv.is_file():
        return
    header, *rows = csv.read_text().splitlines(keepends=True)
    kept = [r for r in rows if float(r.split(",", 1)[0]) <= epoch]
    if len(kept) < len(rows):
        csv.write_text(header + "".join(kept))


class CheckpointMixin:
    """The checkpoint handling of `UnifiedTrainerMixin`, in front of an Ultralytics trainer."""

    nan_stopped: bool = False  # a NaN/inf ended the stage: no checkpoint is written after it

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """A NaN/inf loss or fitness ends the stage: the last good checkpoints are kept, not overwritten."""
        loss_bad = self.loss is not None and not torch.isfinite(self.loss).all()
        if loss_bad or (self.fitness is not None and not np.isfinite(self.fitness) and self.fitness != float("-inf")):
            LOGGER.error(
                f"{'Loss' if loss_bad else 'Fitness'} is NaN/inf in epoch {epoch + 1}: stopping this stage and keeping "
                f"the last good weights ({self.best if self.best.exists() else 'none saved yet'})."
            )
            self.nan_stopped = self.stop = True
        return False

    def resume_training(self, ckpt) -> None:
        """Ultralytics' resume, then drop results.csv rows of epochs the checkpoint does not hold.

        A kill after an epoch's row was written but before its ``last.pt`` was would otherwise leave that epoch twice.
        """
        super().resume_training(ckpt)
        if ckpt is not None and self.resume:
            drop_rows_after(self.csv, self.start_epoch)

    def save_model(self) -> bool:
        """Ultralytics' save, to temporary files of unique names that then replace last.pt and best.pt (a kill never
        leaves a broken one); none after a NaN."""
        if self.nan_stopped:
            return False
        final = self.last, self.best
        tmp = self.last, self.best = tuple(temporary_name(f) for f in final)
        try:
            saved = super().save_model()
            for t, f in zip(tmp, final, strict=True):
                if t.exists():
                    os.replace(t, f)
        finally:
            self.last, self.best = final
            for t in tmp:
                t.unlink(missing_ok=True)
        return saved

    def check_resume(self, overrides: dict[str, Any]) -> None:
        """Ultralytics' resume check, after reading ``resume=``: an unreadable checkpoint says so, not 'not found'."""
        if isinstance(self.args.resume, (str, Path)) and Path(self.args.resume).is_file():
            read_checkpoint(self.args.resume)
        super().check_resume(overrides)

    def final_eval(self):
        """Strip the optimizer from last.pt and best.pt atomically, then validate best.pt as Ultralytics does."""
        if RANK not in {-1, 0}:  # DDP: rank 0 strips and validates
            return
        (self.wdir / ".trained").touch()  # the training loop is over: a resumed protocol only finishes this stage
        last = strip_atomically(self.last) if self.last.exists() else {}
        with rank_zero_alone():
            self.validate_best(last)

    def validate_best(self, last: dict) -> None:
        """Ultralytics' final validation of best.pt, its train results updated from `last` (the stripped last.pt)."""
        if self.best.exists():
            strip_atomically(self.best, updates={"train_results": last.get("train_results")})
            LOGGER.info(f"\nValidating {self.best}...")
            self.validator.args.plots = self.args.plots
            self.metrics = self.validator(model=self.best)
            self.metrics.pop("fitness", None)
            self.epoch += 1  # log best metrics at step epochs+1, as Ultralytics does
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1
