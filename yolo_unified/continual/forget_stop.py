"""Early stopping on forgetting: end the stage, keeping its best weights, before a finished task drops too far."""

from __future__ import annotations

from dataclasses import dataclass

from ultralytics.utils import LOGGER

from yolo_unified.common import PRIMARY_METRIC
from yolo_unified.continual.base import Strategy
from yolo_unified.settings import setting


class ForgetStop(Strategy):
    """cfg: ``{every: 1, patience: 0}``. The limit is the protocol's ``forget_limit``.

    After every ``every``-th epoch the EMA weights are validated on each finished task's val set, at that task's own
    image size. An epoch after which some task's score is below ``(1 - forget_limit) * its score right after its own
    stage`` is never kept as the stage's best; after ``patience + 1`` such epochs in a row the stage stops. Note that
    this selects weights on the same val sets the forgetting report is computed on.
    """

    key = "forget_stop"

    @dataclass(frozen=True)
    class Settings:
        """The settings of ``forget_stop``."""

        every: int = setting(1, "validate the finished tasks after every this many epochs")
        patience: int = setting(0, "epochs in a row that may forget too much before the stage stops")

    def setup(self, trainer) -> None:
        """Start with no violation seen."""
        self.violations = 0
        self.history: list[dict[str, float]] = []

    def accept_epoch(self, trainer) -> bool:
        """Validate the finished tasks; False when one dropped more than the limit."""
        every = self.settings.every
        if not self.context.previous or (trainer.epoch + 1) % every:
            return True
        if self.context.evaluate is None:
            raise ValueError(
                "forget_stop needs the protocol's evaluator (StageContext.evaluate) to score finished tasks"
            )
        scores, save_dir = {}, str(trainer.save_dir / "forget_stop")
        for t in self.context.previous:  # each at its own image size (task_imgsz), as the protocol scores it
            own_args = self.context.eval_args.get(t, {"batch": trainer.args.batch})
            result = self.context.evaluate(trainer.ema.ema, tasks=[t], plots=False, save_dir=save_dir, **own_args)
            scores[t] = result[t][PRIMARY_METRIC[t]]  # the evaluator validates a copy: the EMA is left as it is
        self.history.append(scores)
        limit = self.context.forget_limit
        worst = {t: 1 - s / own for t, s in scores.items() if (own := self.context.own_scores.get(t))}
        bad = {t: d for t, d in worst.items() if d > limit}
        if not bad:
            self.violations = 0
            return True
        self.violations += 1
        LOGGER.warning(
            f"forget_stop: epoch {trainer.epoch + 1} forgets {', '.join(f'{t} {d:.1%}' for t, d in bad.items())} "
            f"(limit {limit:.0%}); these weights are not kept"
        )
        return False

    def stop_stage(self) -> bool:
        """After more than ``patience`` epochs in a row that forgot too much."""
        return self.violations > self.settings.patience
