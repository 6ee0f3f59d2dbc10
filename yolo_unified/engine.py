"""High-level train / val entry points used by the CLI (and usable from Python)."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, YAML, colorstr
from ultralytics.utils.files import increment_path

from yolo_unified.data.config import ULTRALYTICS_TASK, check_heads, load_data_config, task_names
from yolo_unified.ddp import cpu_workers, from_rank_zero, init_cpu_group
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.models.unified.val import VALIDATORS
from yolo_unified.nn.modules import TASKS
from yolo_unified.nn.tasks import CFG_DIR

if TYPE_CHECKING:
    from yolo_unified.continual.protocol import Protocol

PROTOCOL_KEYS = {
    "data",
    "project",
    "name",
    "exist_ok",
    "resume",
    "model",
    "chain",
    "baselines",
    "stages",
}  # not per stage
DEFAULT_DATA_NAME = "unified-synth"  # the built-in synthetic dataset, generated into ./datasets on first use
PRIMARY_METRIC = {  # the score of each task that forgetting is measured on, as Ultralytics' validators name it
    "seg": "metrics/mIoU",
    "det": "metrics/mAP50(B)",
    "cls": "metrics/accuracy_top1",
}


def default_data(datasets_dir: str | Path = "datasets") -> str:
    """Return the built-in default data YAML, generating the synthetic three-task dataset on first use."""
    from yolo_unified.data.synthetic import make_synthetic

    return str(make_synthetic(Path(datasets_dir) / DEFAULT_DATA_NAME))


def run_dir(project: str | Path | None, name: str | None, default_name: str, exist_ok: bool = False) -> Path:
    """An incremented run directory ``project/name`` (``train``, ``train2``, ...) as Ultralytics names its runs (with
    DDP on the CPU, rank 0's choice for every rank)."""
    return from_rank_zero(increment_path(Path(project or "runs/unified").resolve() / (name or default_name), exist_ok))


def train(task: str | None = None, force: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train one task (``task=seg|det|cls``), every task jointly (``joint=True``, `train_joint`) or a sequential
    protocol (``stages=``; by default the recommended one, `recommended_protocol`).

    `force` holds keys that win over a protocol stage's own keys (the command line's); without ``data=`` the
    built-in synthetic data is generated and ``cfg/synth.yaml`` joins `force`, below the caller's keys. Without
    ``task=`` or ``stages=`` the recommended protocol runs (cfg/seq.yaml, or cfg/seq-pretrained.yaml with
    ``pretrained=`` weights), every key given winning over its own (cfg/chain.yaml is the same tasks without
    forgetting mitigation, for comparison). Returns
    ``{"weights": best.pt, "save_dirs": {task: run dir}}`` for one task or a joint run, a protocol's state plus
    ``"weights"`` (its final best.pt) for a protocol.
    """
    force = {k: v for k, v in (force or {}).items() if v is not None}
    task = force.pop("task", task)
    given = {k: v for k, v in {**overrides, **force}.items() if v is not None}
    if cpu_workers(given.get("device")):  # started by torchrun with device=cpu: DDP over gloo (yolo_unified.ddp)
        init_cpu_group()
    overrides = dict(given)
    if overrides.get("resume") and Path(str(overrides["resume"])).is_dir():  # a protocol run directory
        return resume_protocol(overrides.pop("resume"), overrides)
    joint = bool(overrides.get("joint")) or resumes_joint_run(overrides.get("resume"))
    if joint and overrides.get("resume"):  # the run's own data and settings, as Ultralytics resumes
        return train_joint(task, overrides)
    if not overrides.get("data"):
        overrides["data"] = default_data()
        force = {**YAML.load(CFG_DIR / "synth.yaml"), **force}
        overrides.update(force)
    if joint:
        return train_joint(task, overrides)
    default_protocol = task is None and not overrides.get("stages")
    if default_protocol:
        protocol = recommended_protocol(overrides.get("pretrained"))
        if missing := [t for t in TASKS if t not in load_data_config(overrides["data"])["tasks"]]:
            raise ValueError(
                f"{overrides['data']} has no {', '.join(missing)} data, which the default protocol "
                f"(cfg/{protocol.name}) learns: train one task with task=, or give cfg= a protocol with your own stages"
            )
        LOGGER.info(f"yolo-unified: the recommended protocol, cfg/{protocol.name} (every key given wins over its own)")
        force, overrides = dict(overrides), {**YAML.load(protocol), **overrides}
    if overrides.get("stages"):
        if task is not None:
            raise ValueError(f"task={task} and a protocol (stages=) do not go together: each stage names its task")
        stage_force = {k: v for k, v in force.items() if k not in PROTOCOL_KEYS}
        overrides["stages"] = [{**stage, **stage_force} for stage in overrides["stages"]]
        state = train_protocol(**overrides)
        if default_protocol:
            keys = "".join(f" {k}={v}" for k, v in given.items() if k != "name")
            LOGGER.info(f"Compare with plain fine-tuning (no mitigation): yolo-unified train cfg=cfg/chain.yaml{keys}")
        return state
    return train_task(task, overrides)


def recommended_protocol(pretrained: Any) -> Path:
    """The protocol `train` runs without ``task=`` or ``stages=``: cfg/seq-pretrained.yaml when ``pretrained=`` names
    weights (its backbone learns slowly, so it keeps what it knows), else cfg/seq.yaml (a random backbone at a tenth
    of the learning rate would learn too slowly)."""
    weights = isinstance(pretrained, (str, Path)) and str(pretrained).lower() not in {"", "true", "false"}
    return CFG_DIR / ("seq-pretrained.yaml" if weights else "seq.yaml")


def train_task(task: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one task with its unified trainer; return ``{"weights": best.pt, "save_dirs": {task: run dir}}``."""
    if task not in TASKS:
        raise ValueError(f"task='{task}' is not a yolo-unified task; use one of {list(TASKS)} (or omit it)")
    save_dir = run_dir(
        overrides.pop("project", None), overrides.pop("name", None), "train", overrides.get("exist_ok", False)
    )
    trainer = TRAINERS[task](overrides={**overrides, "save_dir": str(save_dir)})
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    return {"weights": str(weights), "save_dirs": {task: str(trainer.save_dir)}}


def resumes_joint_run(resume: Any) -> bool:
    """Whether ``resume=`` names the checkpoint of a joint run (its training arguments say ``joint: True``)."""
    if not (isinstance(resume, (str, Path)) and Path(resume).is_file()):
        return False
    return bool((torch.load(resume, map_location="cpu", weights_only=False).get("train_args") or {}).get("joint"))


def train_joint(task: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train every task of the data YAML in one run (``joint=True``, cfg/joint.yaml) with the joint trainer.

    Returns ``{"weights": best.pt, "save_dirs": {task: run dir}}`` (one run dir for every task). A data YAML with
    a single task trains that task with its own trainer, as ``task=`` does, and says so.
    """
    from yolo_unified.models.unified.joint import JointTrainer, joint_tasks

    if task is not None:
        raise ValueError(f"joint=True trains every task of the data YAML; task={task} does not go with it")
    if overrides.get("stages"):
        raise ValueError("joint=True and a protocol (stages=) do not go together: a protocol's stages name their tasks")
    if overrides.get("resume"):
        trainer = JointTrainer(overrides=overrides)
    else:
        tasks = joint_tasks(overrides.get("tasks"), load_data_config(overrides["data"]), overrides["data"])
        if len(tasks) == 1:
            why = f"tasks={overrides['tasks']} names" if overrides.get("tasks") else f"{overrides['data']} has"
            LOGGER.warning(
                f"joint=True: {why} {tasks[0]} data only; training {tasks[0]} alone, as task={tasks[0]} does (the "
                "joint keys do not apply)"
            )
            return train_task(tasks[0], {**overrides, "joint": False, "tasks": None})
        save_dir = run_dir(
            overrides.pop("project", None), overrides.pop("name", None), "joint", overrides.get("exist_ok")
        )
        trainer = JointTrainer(overrides={**overrides, "save_dir": str(save_dir)})
    trainer.train()
    weights = trainer.best if trainer.best.exists() else trainer.last
    return {"weights": str(weights), "save_dirs": dict.fromkeys(trainer.tasks, str(trainer.save_dir))}


def finished(protocol: Protocol) -> dict[str, Any]:
    """Run (or resume) `protocol`; return its state plus ``weights``: the final best.pt, beside its report."""
    return {**protocol.run(), "weights": str(protocol.root / "weights" / "best.pt")}


def train_protocol(stages: list[dict], **overrides: Any) -> dict[str, Any]:
    """Run a sequential protocol (``cfg/seq.yaml``): its stages in order; returns the protocol state (`finished`).

    ``chain=False`` trains every stage from the initial model (single-task baselines); ``baselines=<baselines run
    dir>`` adds retention to the report. An interrupted run continues with ``resume=<run dir>`` (`resume_protocol`).
    """
    from yolo_unified.continual.protocol import Protocol

    chain, baselines = overrides.pop("chain", True), overrides.pop("baselines", None)
    if resume := overrides.pop("resume", None):  # train() sends an existing run directory to resume_protocol
        raise FileNotFoundError(f"resume={resume}: no protocol run directory there")
    default = "seq" if chain else "baselines"
    root = run_dir(overrides.pop("project", None), overrides.pop("name", None), default, overrides.get("exist_ok"))
    return finished(Protocol(stages, root, overrides, chain=chain, baselines=baselines))


def resume_protocol(root: str | Path, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue the protocol run in `root` with the settings it was started with (kept in its ``protocol.json``).

    Finished stages are skipped and an interrupted stage resumes from its ``last.pt`` (optimizer, schedule, EWC state
    and replay buffer included). Keys in `given` (the rest of the command line) that differ from the run's own are
    ignored, with a warning, as Ultralytics' resume does.
    """
    from yolo_unified.continual.protocol import STATE_FILE, Protocol

    state_file = Path(root) / STATE_FILE
    config = json.loads(state_file.read_text()).get("config") if state_file.is_file() else None
    if not config:
        raise FileNotFoundError(f"resume={root}: no protocol run there (no {STATE_FILE} with the run's settings)")
    saved = {**config["common"], "stages": config["stages"], "chain": config["chain"], "baselines": config["baselines"]}
    if ignored := sorted(k for k, v in (given or {}).items() if k not in saved or saved[k] != v):
        LOGGER.warning(f"resume={root}: continuing with the run's own settings; ignoring {', '.join(ignored)}")
    return finished(Protocol(config["stages"], Path(root), config["common"], config["chain"], config["baselines"]))


def val(
    model: str | torch.nn.Module, data: str | None = None, tasks: list[str] | None = None, **overrides: Any
) -> dict[str, dict[str, float]]:
    """Validate every task the data YAML and the model share (or just `tasks`); print and save a summary.

    `model` is a checkpoint path (or an exported model) or a unified model in memory (a copy is validated, so a
    training model is left as it is); without ``imgsz`` a checkpoint is validated at its training image size (an
    exported model at its export size). Returns ``{task: {metric: value}}`` with Ultralytics' metric names, MAP50-95
    and the rest included. Results go to ``runs/unified/val*/<task>/`` (plots, confusion matrices) plus
    ``metrics.json`` and ``metrics.csv`` beside them (``save_dir=`` puts them elsewhere).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    data = data or default_data()
    cfg = load_data_config(data)
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None and str(model).endswith(".pt"):
        module = load_checkpoint(model)[0]
    model_tasks = set(getattr(module, "task_names", None) or TASKS)
    tasks = [t for t in (tasks or TASKS) if t in cfg["tasks"] and t in model_tasks]
    if not tasks:
        raise ValueError(f"{data} and the model share no task")
    if "imgsz" not in overrides and isinstance(getattr(module, "args", None), dict) and "imgsz" in module.args:
        overrides["imgsz"] = module.args["imgsz"]  # as Ultralytics' val: the size the checkpoint was trained at
    if module is not None and getattr(module, "task_names", None):
        data_names = {t: names for t, names in task_names(cfg).items() if t in tasks}
        check_heads(module.task_names, data_names, model if module is not model else "the model", data)
    save_dir = overrides.pop("save_dir", None)
    save_dir = (
        Path(save_dir)
        if save_dir
        else run_dir(
            overrides.pop("project", None), overrides.pop("name", None), "val", overrides.get("exist_ok", False)
        )
    )
    results = {}
    for t in tasks:
        args = {**overrides, "data": str(data), "task": ULTRALYTICS_TASK[t], "mode": "val"}
        if isinstance(model, torch.nn.Module):
            stats = VALIDATORS[t](save_dir=save_dir / t, args=args)(model=deepcopy(model).float())
        else:
            stats = VALIDATORS[t](save_dir=save_dir / t, args={**args, "model": str(model)})()
        results[t] = {k: float(v) for k, v in stats.items() if k.startswith("metrics/")}
    write_summary(results, save_dir)
    return results


def write_summary(results: dict[str, dict[str, float]], save_dir: Path) -> None:
    """Log a one-table summary of the tasks' headline metrics and save it as JSON and CSV."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    lines = ["task,metric,value"] + [f"{t},{k},{v:.6f}" for t, m in results.items() for k, v in m.items()]
    (save_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    table = "\n".join(
        f"{t:>5}  " + "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in m.items()) for t, m in results.items()
    )
    LOGGER.info(f"\n{colorstr('bold', 'yolo-unified val')}\n{table}\nResults saved to {colorstr('bold', save_dir)}")
