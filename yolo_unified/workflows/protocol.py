"""The sequential protocol: one Ultralytics training run per stage, evaluation of every learned task in between.

Entry points: `train_protocol` (a protocol's stages, by default the recommended one), `resume_protocol` (a killed
run's folder) and `run_protocol` (stages and common keys as they are).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, RANK, YAML, colorstr

from yolo_unified.common import MEMORY_KEY, PRIMARY_METRIC, STATE_FILE, TASKS
from yolo_unified.continual import StageContext, check_strategy_settings
from yolo_unified.data.config import load_data_config, task_names
from yolo_unified.ddp import rank_zero_alone, same_on_every_rank, wait_for_rank_zero
from yolo_unified.files import read_checkpoint, read_json, save_atomically
from yolo_unified.models.unified.joint import JointTrainer
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.models.unified.val import validate
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.base import (
    memory_budget,
    protect_keys,
    protect_recipe,
    run_dir,
    save_memory,
    stage_memory,
)
from yolo_unified.workflows.knowledge import (
    command_line,
    knowledge_of,
    known_lines,
    record_command,
    recorded_scores,
    recorded_tasks,
    warn_unprotected,
)
from yolo_unified.workflows.report import run_summary, write_report
from yolo_unified.workflows.scores import own_scores, stage_tasks

PROTOCOL_KEYS = {"data", "project", "name", "exist_ok", "resume", "model", "chain", "baselines", "stages"}  # run-wide
RELATIVE_PATHS = "relative to this folder"  # protocol.json's "paths": its stage paths are relative to the run folder
STAGE_PATHS = ("weights", "save_dir")  # the paths of a stage record


def read_state(root: str | Path) -> dict[str, Any]:
    """The ``protocol.json`` of the run in `root`, its stage paths (recorded relative to the run folder, so a moved run
    keeps its weights) usable from here. Errors name the file."""
    root, file = Path(root), Path(root) / STATE_FILE
    state = read_json(file)
    if not isinstance(state, dict) or not isinstance(state.get("stages"), list):
        raise ValueError(f"{file} is not a protocol record (no 'stages' list)")
    if state.pop("paths", None) == RELATIVE_PATHS:
        state["stages"] = [{**s, **{k: str(root / s[k]) for k in STAGE_PATHS if k in s}} for s in state["stages"]]
    return state


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Save `state` as ``protocol.json`` in `root` (atomically), its stage paths inside `root` relative to it."""
    folder = root.absolute()

    def relative(path: str) -> str:
        """`path` relative to the run folder when inside it, else absolute."""
        full = Path(path).absolute()
        return full.relative_to(folder).as_posix() if full.is_relative_to(folder) else str(full)

    stages = [{**s, **{k: relative(s[k]) for k in STAGE_PATHS if k in s}} for s in state["stages"]]
    save_atomically({"paths": RELATIVE_PATHS, **state, "stages": stages}, root / STATE_FILE)


def recommended_protocol(pretrained: Any) -> Path:
    """The protocol run without ``stages=``: cfg/seq-pretrained.yaml with ``pretrained=`` weights, else cfg/seq.yaml."""
    weights = isinstance(pretrained, (str, Path)) and str(pretrained).lower() not in {"", "true", "false"}
    return CFG_DIR / ("seq-pretrained.yaml" if weights else "seq.yaml")


def train_protocol(keys: dict[str, Any], force: dict[str, Any], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the protocol of ``stages=`` in `keys`, or the recommended one; `force` keys win over every stage's own,
    `given` goes into the comparison command printed at the end. Returns `finished`'s dict."""
    recommended = not keys.get("stages")
    if recommended:
        protocol = recommended_protocol(keys.get("pretrained"))
        if missing := [t for t in TASKS if t not in load_data_config(keys["data"])["tasks"]]:
            raise ValueError(
                f"{keys['data']} has no {', '.join(missing)} data, which the default protocol "
                f"(cfg/{protocol.name}) learns: train one task with task=, or give cfg= a protocol with your own stages"
            )
        LOGGER.info(f"yolo-unified: the recommended protocol, cfg/{protocol.name} (every key given wins over its own)")
        force, keys = dict(keys), {**YAML.load(protocol), **keys}
    stage_force = {k: v for k, v in force.items() if k not in PROTOCOL_KEYS}
    keys = dict(keys)
    stages = [{**stage, **stage_force} for stage in keys.pop("stages")]
    hint = "".join(f" {k}={v}" for k, v in (given or {}).items() if k != "name")
    compare = f"yolo-unified train cfg=cfg/chain.yaml{hint}" if recommended else None
    return run_protocol(stages, compare=compare, command=command_line(given or {}), **keys)


def run_protocol(stages: list[dict], compare: str | None = None, command: str = "", **keys: Any) -> dict[str, Any]:
    """Run a sequential protocol's `stages` in order with the common `keys` (``chain=False``: every stage from the
    initial model, single-task baselines); returns `finished`'s dict."""
    chain, baselines = keys.pop("chain", True), keys.pop("baselines", None)
    if resume := keys.pop("resume", None):  # train() sends an existing run directory to resume_protocol
        raise FileNotFoundError(f"resume={resume}: no protocol run directory or checkpoint there")
    default = "seq" if chain else "baselines"
    root = run_dir(keys.pop("project", None), keys.pop("name", None), default, keys.get("exist_ok"))
    return finished(Protocol(stages, root, keys, chain=chain, baselines=baselines), compare, command)


def resumes_protocol(resume: Any) -> bool:
    """Whether ``resume=`` names a folder (a protocol run's) rather than a checkpoint."""
    return bool(resume) and Path(str(resume)).is_dir()


def resume_protocol(root: str | Path, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue the protocol run in `root` with its own settings (``protocol.json``): finished stages are skipped, an
    interrupted one resumes from its ``last.pt``; keys in `given` are ignored with a warning, as Ultralytics does."""
    config = read_state(root).get("config") if (Path(root) / STATE_FILE).is_file() else None
    if not config:
        raise FileNotFoundError(f"resume={root}: no protocol run there (no {STATE_FILE} with the run's settings)")
    saved = {**config["common"], "stages": config["stages"], "chain": config["chain"], "baselines": config["baselines"]}
    if ignored := sorted(k for k, v in (given or {}).items() if k not in saved or saved[k] != v):
        LOGGER.warning(f"resume={root}: continuing with the run's own settings; ignoring {', '.join(ignored)}")
    protocol = Protocol(config["stages"], Path(root), config["common"], config["chain"], config["baselines"])
    return finished(protocol, command=command_line({"resume": root}))


def finished(protocol: Protocol, compare: str | None = None, command: str = "") -> dict[str, Any]:
    """Run (or resume) `protocol`, record what its final model knows (`command` trained it) and print its summary;
    return its state plus ``weights`` (the final best.pt)."""
    state = protocol.run()
    known = None
    if RANK in {-1, 0} and protocol.chain:
        final, done, data = protocol.root / "weights" / "best.pt", state["stages"], protocol.common["data"]
        trained = [(t, data, score) for s in done for t, score in own_scores(s).items()]
        last = {t: v[PRIMARY_METRIC[t]] for t, v in done[-1]["scores"].items()}
        with rank_zero_alone():  # DDP: it validates while the other ranks are done
            now, record = record_command(protocol.before, final, trained, last, command, protocol.root / "known")
        if now:
            known = known_lines(record, now, protocol.forget_limit)
    if RANK in {-1, 0}:
        images = example_images(protocol.common["data"])
        memory = memory_budget(protocol.root / "weights" / "best.pt")
        LOGGER.info(run_summary(protocol.root, state, protocol.forget_limit, images, compare, memory, known))
    return {**state, "weights": str(protocol.root / "weights" / "best.pt")}


def example_images(data: str) -> str | None:
    """A folder of images to try ``predict`` on: the val images of the data's detection or segmentation task."""
    tasks = load_data_config(data)["tasks"]
    return next((tasks[t]["val"] for t in ("det", "seg") if tasks.get(t, {}).get("val")), None)


def check_stage_tasks(stage: dict[str, Any], i: int) -> None:
    """A stage names one task (``task: seg``) or, for a joint stage, several (``tasks: [seg, det]``); else an error."""
    if ("task" in stage) == ("tasks" in stage):
        raise ValueError(f"stage {i + 1}: give either task (one of {list(TASKS)}) or tasks (a list of them), not both")
    tasks = stage["tasks"] if "tasks" in stage else [stage["task"]]
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) < len(tasks):
        key = "tasks" if "tasks" in stage else "task"
        raise ValueError(f"stage {i + 1}: {key} must name distinct tasks of {list(TASKS)}, got {stage[key]!r}")


class Protocol:
    """Run ``stages`` (dicts with ``task``, or ``tasks`` for a joint stage, and any train/strategy keys) in order,
    resumably, in ``root``.

    Each stage starts from the previous stage's best weights (``chain=True``) or the initial model; after it, every
    task learned so far is scored on the protocol's ``data`` and recorded in ``protocol.json`` (with the settings
    ``resume`` continues from). The strategies' memory goes into the stage's ``best.pt``; a stage that keeps no weights
    keeps no memory. The final model is ``<root>/weights/best.pt``, with its memory.
    """

    def __init__(
        self, stages: list[dict], root: Path, common: dict[str, Any], chain: bool = True, baselines: str | None = None
    ):
        """Check the stages and remember where and how to run them (`baselines`: a baselines run for retention)."""
        if not stages:
            raise ValueError("the protocol has no stages")
        for i, stage in enumerate(stages):
            check_stage_tasks(stage, i)
            check_strategy_settings({**common, **stage}, f"stage {i + 1}: ")
        self.stages, self.root, self.common, self.chain, self.baselines = stages, Path(root), common, chain, baselines
        self.state_file = self.root / STATE_FILE
        self.state = read_state(self.root) if self.state_file.is_file() else {"stages": []}
        self.before = knowledge_of(common.get("model") if chain else None)  # what the start model knows
        self.recipe = protect_recipe() if common.get("protect", True) else {}

    def known(self, i: int) -> list[str]:
        """The tasks the start model's record knows that stage `i`, a one-task stage, does not train."""
        trained = stage_tasks(self.stages[i])
        if len(trained) > 1:  # a joint stage trains every task of its data; the others are scored at the end
            return []
        return recorded_tasks(self.before, trained)

    def kept(self, i: int) -> list[str]:
        """The `known` tasks stage `i` keeps as finished tasks (cfg/protect.yaml's ``tasks:`` under the stage's keys),
        unless ``protect=False``."""
        return self.known(i) if self.recipe else []

    def stage_args(self, i: int) -> dict[str, Any]:
        """Ultralytics overrides of stage `i`: the common keys, then the stage's own (``task`` removed), over
        cfg/protect.yaml's ``tasks:`` keys where the start model knows tasks the stage does not train (`known`); in a
        one-task stage whose keys do not set ``replay``, cfg/protect.yaml's ``store:`` keys (unless ``protect=False``;
        a joint stage stores nothing)."""
        args = {**self.common, **{k: v for k, v in self.stages[i].items() if k != "task"}}
        if kept := self.kept(i):
            args = protect_keys(self.recipe, kept, args)
        stored = self.recipe["store"] if self.recipe and len(stage_tasks(self.stages[i])) == 1 else {}
        return {**stored, **args} if args.get("replay") is None else args

    def eval_args(self, task: str) -> dict[str, Any]:
        """How a task is scored between stages: with the batch of the stage that learned it (its ``task_args``)."""
        i = next(i for i, stage in enumerate(self.stages) if task in stage_tasks(stage))
        args = self.stage_args(i)
        args.update((args.get("task_args") or {}).get(task) or {})
        return {"batch": args.get("batch", 16)}

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage, then write the final model and the forgetting report; return the state."""
        self.root.mkdir(parents=True, exist_ok=True)
        if "config" not in self.state:  # what resume= needs to carry on exactly as started
            self.state["config"] = {
                "stages": self.stages, "common": self.common, "chain": self.chain, "baselines": self.baselines
            }  # fmt: skip
            if RANK in {-1, 0}:  # DDP (yolo_unified.ddp): rank 0 writes, the other ranks keep their copy
                write_state(self.root, self.state)
        for i, stage in enumerate(self.stages):
            if i < len(self.state["stages"]):
                LOGGER.info(
                    f"{colorstr('protocol:')} stage {i + 1} ({'+'.join(stage_tasks(stage))}) already done, skipping"
                )
                continue
            self.run_stage(i)
        if RANK > 0:
            return self.state
        self.write_final_model()
        write_report(self.root, self.state, forget_limit=self.forget_limit, baselines=self.baselines)
        return self.state

    @property
    def forget_limit(self) -> float:
        """The largest relative drop of a finished task's score that passes (``forget_limit``, default 5%)."""
        return float(self.common.get("forget_limit", 0.05))

    def stage_dir(self, i: int) -> Path:
        """Stage `i`'s run folder: ``<root>/<i + 1>-<its tasks>`` (``1-seg``, ``2-seg+det``)."""
        return self.root / f"{i + 1}-{'+'.join(stage_tasks(self.stages[i]))}"

    def start_weights(self) -> str | None:
        """The weights the next stage starts from: the last recorded stage's (chained), else the initial model."""
        done = self.state["stages"]
        return done[-1]["weights"] if done and self.chain else self.common.get("model")

    def stage_context(self, i: int) -> StageContext:
        """What stage `i`'s strategies know: the finished tasks (the protocol's, and those the start model knows:
        `known`), their scores and sizes, the memory, an evaluator."""
        done, weights, learned = self.state["stages"], self.start_weights(), self.learned()
        known = [t for t in self.kept(i) if t not in learned]
        return StageContext(
            index=i,
            task="+".join(stage_tasks(self.stages[i])),
            previous=[*learned, *known] if self.chain else [],
            own_scores={
                **recorded_scores(self.before, known),
                **{t: score for s in done for t, score in own_scores(s).items()},
            },
            eval_args={t: self.eval_args(t) for t in learned},
            prev_weights=weights if self.chain else None,
            data=self.common["data"],
            memory=same_on_every_rank(stage_memory(weights)) if self.chain else {},
            forget_limit=self.forget_limit,
            root=self.root,
            evaluate=partial(validate, data=self.common["data"]),
        )

    def learned(self) -> list[str]:
        """The tasks the recorded stages trained, in order."""
        return list(dict.fromkeys(t for s in self.state["stages"] for t in stage_tasks(s)))

    def run_stage(self, i: int) -> None:
        """Train stage `i`, then (rank 0) score every task learned so far and record the stage in protocol.json."""
        tasks, context = stage_tasks(self.stages[i]), self.stage_context(i)
        if kept := self.kept(i):
            LOGGER.info(f"protect: stage {i + 1} keeps {', '.join(kept)}, which model={self.common['model']} knows "
                        "(cfg/protect.yaml under the stage's keys; protect=False for a plain fine-tune)")  # fmt: skip
        elif known := self.known(i):
            warn_unprotected(known)
        stage_dir = self.stage_dir(i)
        args = {**self.stage_args(i), "model": self.start_weights(), "save_dir": str(stage_dir)}
        if len(tasks) > 1:
            args.update(joint=True, tasks=tasks)
        trainer_class = JointTrainer if len(tasks) > 1 else TRAINERS[tasks[0]]
        best = self.train_stage(trainer_class, args, context, stage_dir)
        if RANK > 0:  # DDP: rank 0 records the stage (scores, memory, protocol.json); read what it wrote
            wait_for_rank_zero()
            self.state = read_state(self.root)
            return
        with rank_zero_alone():  # DDP: the other ranks wait at the barrier below
            self.record_stage(i, best, self.start_weights(), context)
        wait_for_rank_zero()

    def record_stage(self, i: int, best: str | None, start: str | None, context: StageContext) -> None:
        """Keep the stage's memory beside its best.pt, score the tasks learned so far on it, save protocol.json."""
        tasks, stage_dir = stage_tasks(self.stages[i]), self.stage_dir(i)
        kept = best is not None
        if not kept:  # nothing acceptable was trained (e.g. every epoch forgot too much): keep the start
            LOGGER.warning(f"stage {i + 1} ({context.task}) kept no weights; the protocol continues from {start}")
            best = start
        else:
            save_memory(context.memory, best)
        scores = {}
        for t in dict.fromkeys([*(self.learned() if self.chain else []), *tasks]):  # the start model's: at the end
            scored = validate(best, self.common["data"], tasks=[t], save_dir=stage_dir / "eval", plots=False,
                              per_class=True, **self.eval_args(t))  # fmt: skip
            scores.update(scored)
        names = task_names(load_data_config(self.stage_args(i)["data"]))
        record = {"task": context.task, "weights": str(best), "save_dir": str(stage_dir), "scores": scores,
                  "classes": {t: list(names[t].values()) for t in tasks}}  # fmt: skip
        if len(tasks) > 1:
            record.update(tasks=tasks, own_scores={t: scores[t][PRIMARY_METRIC[t]] for t in tasks})
        else:
            record["own_score"] = scores[context.task][PRIMARY_METRIC[context.task]]
        self.state["stages"].append({**record, "kept_weights": kept})
        write_state(self.root, self.state)

    def write_final_model(self) -> None:
        """``<root>/weights/best.pt``: the last stage's model (each task's image size on it) with its memory."""
        last = self.state["stages"][-1]["weights"]
        final = self.root / "weights" / "best.pt"
        final.parent.mkdir(exist_ok=True)
        save_atomically({**read_checkpoint(last), MEMORY_KEY: stage_memory(last)}, final)

    @staticmethod
    def train_stage(trainer_class: type, args: dict, context: StageContext, stage_dir: Path) -> str | None:
        """Train one stage, resuming an interrupted one; return its best (else last) checkpoint, or None."""
        weights = stage_dir / "weights"
        if (weights / ".trained").is_file():  # training ended but the stage was not recorded: finish it
            trainer = trainer_class(overrides={**args, "save_dir": str(stage_dir / "finish")}, context=context)
            trainer.best, trainer.last = weights / "best.pt", weights / "last.pt"
            trainer.finish_stage()
        elif (weights / "last.pt").is_file():
            LOGGER.info(f"{colorstr('protocol:')} resuming {weights / 'last.pt'}")
            trainer = trainer_class(overrides={"resume": str(weights / "last.pt")}, context=context)
            trainer.train()
        else:
            trainer = trainer_class(overrides=args, context=context)
            trainer.train()
        return str(weights / "best.pt") if (weights / "best.pt").is_file() else None
