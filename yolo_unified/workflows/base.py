"""What every workflow shares: run folders, the built-in data, the strategies' memory in a checkpoint, and the
``cfg=`` / unknown-key handling of train keys."""

from __future__ import annotations

import copy
import io
from difflib import get_close_matches
from functools import cache
from pathlib import Path
from typing import Any

import torch
from ultralytics.cfg import _handle_deprecation
from ultralytics.utils import YAML
from ultralytics.utils.files import increment_path

from yolo_unified.common import MEMORY_FILE, MEMORY_KEY
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.ddp import from_rank_zero
from yolo_unified.defaults import train_keys
from yolo_unified.files import read_checkpoint, read_data, save_atomically
from yolo_unified.nn.tasks import CFG_DIR

DEFAULT_DATA_NAME = "unified-synth"  # the built-in synthetic dataset, generated into ./datasets on first use


def default_data(datasets_dir: str | Path = "datasets") -> str:
    """Return the built-in default data YAML, generating the synthetic three-task dataset on first use."""
    return str(make_synthetic(Path(datasets_dir) / DEFAULT_DATA_NAME))


def with_default_data(keys: dict[str, Any], force: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`keys` and `force` (the keys that win over a protocol's per-stage ones) for a run: without ``data=`` the
    built-in synthetic data, whose settings (cfg/synth.yaml) join `force` below the caller's own keys."""
    if keys.get("data"):
        return keys, force
    force = {**YAML.load(CFG_DIR / "synth.yaml"), **force}
    return {**keys, "data": default_data(), **force}, force


def run_dir(project: str | Path | None, name: str | None, default_name: str, exist_ok: bool = False) -> Path:
    """An incremented run folder ``project/name`` as Ultralytics names runs (CPU DDP: rank 0's for every rank)."""
    return from_rank_zero(increment_path(Path(project or "runs/unified").resolve() / (name or default_name), exist_ok))


def save_memory(memory: dict[str, Any], weights: str | Path) -> None:
    """Put the strategies' `memory` into checkpoint `weights` (its ``continual`` key), replacing what it held: a
    copied ``best.pt`` carries what later runs need to keep its tasks."""
    save_atomically({**read_checkpoint(weights), MEMORY_KEY: memory}, Path(weights))


def is_checkpoint_file(weights: str | Path | None) -> bool:
    """Whether `weights` names a ``.pt`` file that exists (not None, not a model YAML)."""
    return bool(weights) and Path(weights).suffix == ".pt" and Path(weights).is_file()


@cache
def packaged_recipe(name: str) -> dict[str, Any]:
    """A YAML file of cfg/, read once."""
    return YAML.load(CFG_DIR / name)


def protect_recipe() -> dict[str, Any]:
    """cfg/protect.yaml: the keys that keep what a trained model knows (``store``, ``tasks``, ``classes``); a copy,
    which callers may change."""
    return copy.deepcopy(packaged_recipe("protect.yaml"))


def protect_keys(recipe: dict[str, Any], known: list[str], keys: dict[str, Any], added: bool = False) -> dict[str, Any]:
    """`keys` over cfg/protect.yaml's (`recipe`) that keep the tasks `known` (``tasks:``, their heads held: lr_mult 0
    unless `keys` set theirs) and, where the run adds classes to its task (`added`), its old classes (``classes:``)."""
    merged = {**recipe["tasks"], **(recipe["classes"] if added else {})}
    given = keys.get("lr_mult") or {}
    held = {**dict.fromkeys(known, 0.0), **given} if isinstance(given, dict) else given
    return {**merged, **keys, "lr_mult": held}


def stage_memory(weights: str | None) -> dict[str, Any]:
    """The strategies' memory of a finished stage (`checkpoint_memory`); empty for a plain checkpoint or a model
    YAML."""
    return checkpoint_memory(read_checkpoint(weights), weights) if is_checkpoint_file(weights) else {}


def checkpoint_memory(ckpt: dict[str, Any], weights: str | Path) -> dict[str, Any]:
    """The strategies' memory in `ckpt`, the checkpoint read from `weights`: its ``continual`` key, else ``memory.pt``
    beside `weights` (runs of 0.x, read with ``weights_only``), else empty."""
    if (memory := ckpt.get(MEMORY_KEY)) is not None:
        return memory
    file = Path(weights).with_name(MEMORY_FILE)
    return read_data(file) if file.is_file() else {}


def memory_budget(weights: str | Path) -> str | None:
    """What the memory of `weights` keeps, in words: the stored images of each task, the share of its training
    images they are, and the memory's size in the checkpoint; None without stored images."""
    memory = stage_memory(str(weights))
    stored, drawn_from = memory.get("replay") or {}, memory.get("replay_of") or {}
    if not any(stored.values()):
        return None
    counts = [
        f"{task} {len(images)}"
        + (f" of {drawn_from[task]} ({len(images) / drawn_from[task]:.0%})" if task in drawn_from else "")
        for task, images in stored.items()
        if images
    ]
    buffer = io.BytesIO()
    torch.save(memory, buffer)
    return f"{', '.join(counts)} training images stored (in {Path(weights).name}: {buffer.tell() / 1e6:.1f} MB)"


def split_cfg(keys: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys of the ``cfg=`` file named in `keys` (none without one), and the other keys: the explicit ones."""
    explicit = {k: v for k, v in keys.items() if k != "cfg"}
    if not (cfg := keys.get("cfg")):
        return {}, explicit
    return YAML.load(cfg_file(cfg)) or {}, explicit


def cfg_file(cfg: str | Path) -> Path:
    """A ``cfg=`` file: as given, else the packaged one of that name (``cfg=cfg/chain.yaml`` works from any folder)."""
    path = Path(cfg)
    packaged = CFG_DIR / (path.relative_to("cfg") if path.parts[:1] == ("cfg",) else path)
    if path.is_file() or packaged.is_file():
        return path if path.is_file() else packaged
    raise FileNotFoundError(f"cfg file '{cfg}' not found (nor among the packaged ones in {CFG_DIR})")


def check_keys(args: dict[str, Any], extra: set[str] = frozenset()) -> None:
    """Fail on keys that are neither Ultralytics' nor ours, suggesting close ones and listing the valid ones.

    Ultralytics' deprecated spellings (``half=True``, ``int8=True``) are renamed in place first, as ``yolo`` does.
    """
    _handle_deprecation(args)  # renames in place
    valid = {*train_keys(), "save_dir", *extra}
    if unknown := [k for k in args if k not in valid]:
        hints = [f"'{k}' (did you mean {', '.join(close)}?)" if (close := get_close_matches(k, valid)) else f"'{k}'"
                 for k in unknown]  # fmt: skip
        raise SyntaxError(f"unknown key(s) {', '.join(hints)}. Valid keys: {', '.join(sorted(valid))}")
