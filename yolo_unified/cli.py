"""``yolo-unified MODE key=value ...``: the command line, in Ultralytics' syntax."""

from __future__ import annotations

import sys
import textwrap
from difflib import get_close_matches
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from ultralytics.cfg import smart_value
from ultralytics.utils import LOGGER

import yolo_unified
from yolo_unified.balancing import BALANCERS, method_settings
from yolo_unified.common import listed
from yolo_unified.continual import STRATEGIES
from yolo_unified.data.class_split import split_classes
from yolo_unified.data.coco import convert_coco
from yolo_unified.data.prepare import DET_NAMES, SEG_NAMES, VOC_IN_COCO, prepare_hw2
from yolo_unified.model import UnifiedYOLO
from yolo_unified.settings import Entry, described, read_keys, settings_entries, yaml_value
from yolo_unified.workflows.base import check_keys, run_dir, split_cfg

BENCHMARK_KEYS = {"model", "imgsz", "data", "runs", "warmup", "threads", "project", "name", "exist_ok"}
DATA_KEYS = {  # data ACTION -> its keys
    "prepare": {"src", "dst", "yaml"},
    "coco": {"src", "dst", "yaml", "names", "others"},
    "split": {"data", "task", "classes", "dst", "yaml"},
}
MODES = ("train", "val", "predict", "export", "benchmark", "info", "data")
HELP = f"""yolo-unified {yolo_unified.__version__}: one YOLOv8n model, one head, three tasks (det, seg, cls).

Usage: yolo-unified MODE key=value ...   (Ultralytics syntax; cfg=file.yaml loads keys, the command line wins)

  yolo-unified train                                    # the protocol (cfg/seq.yaml) on built-in synthetic data
  yolo-unified train cfg=cfg/chain.yaml                 # the same tasks by plain fine-tuning, for comparison
  yolo-unified train data=datasets/hw2.yaml             # the protocol, seg -> det -> cls, on your data
  yolo-unified train resume=runs/unified/seq           # continue a killed protocol run
  yolo-unified train cfg=cfg/joint.yaml data=datasets/hw2.yaml   # every task at once (joint training; balance=...)
  yolo-unified train task=seg data=datasets/hw2.yaml epochs=30 imgsz=512   # one task
  yolo-unified train task=det data=datasets/hw2.yaml model=runs/unified/train/weights/best.pt
  yolo-unified val model=runs/unified/seq/weights/best.pt data=datasets/hw2.yaml
  yolo-unified predict model=runs/unified/seq/weights/best.pt source=images/or/video.mp4/or/dir   # save=True
  yolo-unified export model=runs/unified/seq/weights/best.pt format=onnx imgsz=512 dynamic=True quantize=16
  yolo-unified export model=runs/unified/seq/weights/best.pt format=torchscript
  yolo-unified export model=runs/unified/seq/weights/best.pt format=onnx quantize=8   # INT8 for ONNX Runtime
  yolo-unified export model=runs/unified/seq/weights/best.pt format=openvino [quantize=8]   # OpenVINO fp32 / INT8
  yolo-unified val model=runs/unified/seq/weights/best.onnx data=datasets/hw2.yaml   # and *_openvino_model/, INT8
  yolo-unified benchmark model=runs/unified/seq/weights/best.pt imgsz=512 threads=2
  yolo-unified info model=runs/unified/seq/weights/best.pt   # what it knows: tasks, classes, scores, lineage
  yolo-unified data prepare src=../shared/data/hw2 dst=datasets/hw2
  yolo-unified data coco src=../shared/data/mini_coco dst=datasets/mini_coco names=hw2   # or voc, or person,car
  yolo-unified data split data=datasets/hw2.yaml task=det classes=person,car,dog,cat,chair dst=datasets/hw2-det-first5
  yolo-unified help replay balance_args                  # those keys only, with their settings

MODE     one of {", ".join(MODES)}, or help [KEY ...], --version
task     seg | det | cls (train only: one task; omitted: the protocol of cfg=, else cfg/seq.yaml, or
         cfg/seq-pretrained.yaml when pretrained= names weights: seg, det, cls)
joint    train: True trains every task of the data YAML in one run (cfg/joint.yaml; its keys below)
data     multi-task data YAML (default: the built-in synthetic data, generated into ./datasets)
model    unified model YAML or checkpoint (*.pt); a YOLOv8 detection/classification checkpoint gives its backbone
source   predict: image, video, folder, glob or stream; annotated copies go to runs/unified/predict*/ (save=False: off)
format   export: onnx, torchscript, openvino (tested on CPU), or any Ultralytics format, e.g. engine (TensorRT, GPU)
quantize export: 8 = INT8 (onnx, openvino), calibrated on data= (default: the checkpoint's training data): the split=
         (val) images of every task in equal shares, fraction= of them; 16 = FP16
seg_argmax  export: True bakes the segmentation argmax into the graph (output seg = class map, not logits)
runs, warmup, threads   benchmark: timed runs (default 50), warm-up runs (10), CPU threads (all cores); its data=
         calibrates the INT8 rows (default: the checkpoint's training data; without any, those rows are left out)
other    any Ultralytics train/val/predict/export argument: epochs, imgsz, batch, lr0, conf, iou, dynamic, ...
"""


def package_keys() -> dict[str, list[Entry]]:
    """The package's top-level train keys by section, as cfg/default.yaml declares them (type, default, meaning),
    and the keys of the strategies registered from outside the package (`register_strategy`), each meaning the first
    line of its docstring."""
    sections = read_keys((files("yolo_unified.cfg") / "default.yaml").read_text())
    declared = {entry.key for entries in sections.values() for entry in entries}
    if added := [key for key in STRATEGIES if key not in declared]:
        doc = {key: (STRATEGIES[key].__doc__ or "").strip().split("\n")[0] for key in added}
        sections["Strategies registered from outside the package"] = [
            Entry(key, "dict, optional", None, doc[key] or "(no docstring)") for key in added
        ]
    return sections


def key_settings() -> dict[str, dict[str, list[Entry]]]:
    """The settings under a top-level key, by the case they apply in: a strategy's (its ``Settings``, under ``""``),
    and ``balance_args``' under each ``balance=`` method (the methods without settings under one case)."""
    found: dict[str, dict[str, list[Entry]]] = {
        key: {"": settings_entries(cls.Settings)} for key, cls in STRATEGIES.items()
    }
    methods = {name: described(*method_settings(cls)) for name, cls in BALANCERS.items()}
    found["balance_args"] = {f"balance={name}": entries for name, entries in methods.items() if entries}
    if bare := [name for name, entries in methods.items() if not entries]:
        found["balance_args"]["balance=" + ", ".join(bare)] = []
    return found


def keys_help(keys: list[str]) -> str:
    """The package's keys with their type, default and meaning, and the settings under each (`key_settings`), as
    ``yolo-unified help`` prints them: all of them, or the `keys` named (an unknown one fails naming a close one)."""
    sections, settings = package_keys(), key_settings()
    known = [entry.key for entries in sections.values() for entry in entries]
    for key in keys:
        if key not in known:
            close = "".join(f" (did you mean {c!r}?)" for c in get_close_matches(key, known, n=1))
            raise SyntaxError(f"'{key}' is not a key of yolo-unified{close}; 'yolo-unified help' lists them")
    lines = ["Keys of yolo-unified (cfg/default.yaml; docs/reference.md), with their settings:"]
    for title, entries in sections.items():
        shown = [entry for entry in entries if not keys or entry.key in keys]
        lines += [f"\n{title}"] if shown and title else []
        for entry in shown:
            lines += wrapped(f"{entry.key}={yaml_value(entry.default)}  ({entry.type}) {entry.meaning}", 2)
            for case, case_entries in settings.get(entry.key, {}).items():
                depth = 6 if case else 4
                lines += [f"    with {case}:{'' if case_entries else ' no settings'}"] if case else []
                for sub in case_entries:
                    lines += wrapped(f"{sub.key}: {yaml_value(sub.default)}  ({sub.type}) {sub.meaning}", depth)
    return "\n".join(lines)


def wrapped(text: str, indent: int) -> list[str]:
    """`text` in lines of at most 120 characters, indented by `indent` spaces (continued lines by 4 more)."""
    pad = " " * indent
    return textwrap.wrap(text, 120, initial_indent=pad, subsequent_indent=pad + "    ", break_on_hyphens=False)


def parse_tokens(tokens: list[str]) -> dict[str, Any]:
    """The ``key=value`` tokens as a dict, values typed as Ultralytics types them (``cfg=`` kept as a key)."""
    pairs: dict[str, Any] = {}
    for token in tokens:
        if "=" not in token:
            raise SyntaxError(f"'{token}' is not a key=value argument. See 'yolo-unified help'.")
        key, value = token.split("=", 1)
        pairs[key.strip()] = typed_value(key.strip(), value.strip())
    return pairs


def typed_value(key: str, value: str) -> Any:
    """A command-line value typed as Ultralytics types it; a ``{...}`` one (``task_share={det: 0.5}``,
    ``balance_args="{weights: {seg: 2}}"``) read as the YAML mapping it is in a cfg file."""
    if not value.startswith("{"):
        return smart_value(value)
    try:
        mapping = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SyntaxError(
            f"{key}={value} is not a YAML mapping ({str(e).splitlines()[0]}); e.g. {key}={{det: 0.5}}"
        ) from e
    if not isinstance(mapping, dict):
        raise SyntaxError(f"{key}={value} is not a YAML mapping; e.g. {key}={{det: 0.5}}")
    return mapping


def parse_args(tokens: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` tokens into a dict: the keys of a ``cfg=file.yaml`` among them, the rest over those."""
    from_file, explicit = split_cfg(parse_tokens(tokens))
    return {**from_file, **explicit}


def coco_names(value: Any) -> list[str] | None:
    """The classes of ``data coco names=``: None (all categories), ``hw2`` (the ten HW2 detection classes), ``voc``
    (the twenty VOC classes of HW2 segmentation, by their VOC names), a list, or comma-separated names
    (``names="person,dining table"``; ``"aeroplane:airplane"`` names the category airplane aeroplane)."""
    if value is None or isinstance(value, list):
        return value
    if value == "hw2":
        return list(DET_NAMES)
    if value == "voc":
        return [f"{name}:{VOC_IN_COCO[name]}" if name in VOC_IN_COCO else name for name in SEG_NAMES[1:]]
    return listed(value)


def prepare_data(tokens: list[str]) -> dict | Path:
    """``yolo-unified data prepare|coco|split key=value ...``: lay out the HW2 data (`prepare_hw2`), convert COCO
    instance annotations into images shared by det and seg (`convert_coco`), both returning the summary, or write a
    class subset of one task (`split_classes`), returning its data YAML."""
    if not tokens or tokens[0] not in DATA_KEYS:
        raise SyntaxError(
            "usage: yolo-unified data prepare src=../shared/data/hw2 dst=datasets/hw2 [yaml=...]\n"
            "       yolo-unified data coco src=... dst=... [names=person,car,...|hw2|voc] [yaml=...] "
            "[others=background|ignore]\n"
            "       yolo-unified data split data=... task=det|seg|cls classes=person,car,... dst=... [yaml=...]"
        )
    action, args = tokens[0], parse_args(tokens[1:])
    if unknown := set(args) - DATA_KEYS[action]:
        raise SyntaxError(
            f"unknown key(s) {sorted(unknown)} for 'data {action}'; valid keys: {sorted(DATA_KEYS[action])}"
        )
    if action == "prepare":
        return prepare_hw2(args.get("src", "../shared/data/hw2"), args.get("dst", "datasets/hw2"), args.get("yaml"))
    needed = ("data", "task", "classes", "dst") if action == "split" else ("src", "dst")
    if missing := [key for key in needed if not args.get(key)]:
        raise SyntaxError(f"'data {action}' needs {' and '.join(f'{key}=' for key in missing)}")
    if action == "split":
        return split_classes(args["data"], args["task"], listed(args["classes"]), args["dst"], args.get("yaml"))
    names = coco_names(args.get("names"))
    return convert_coco(args["src"], args["dst"], names, args.get("yaml"), args.get("others", "background"))


def mode_args(mode: str, tokens: list[str]) -> dict[str, Any]:
    """The keys of one mode's command line, checked: train keeps ``cfg=`` (its explicit keys win over a protocol's
    stages), the other modes read the file here and need ``model=``."""
    if mode == "train":
        return parse_tokens(tokens)
    args = parse_args(tokens)
    if mode == "benchmark":
        if unknown := set(args) - BENCHMARK_KEYS:
            raise SyntaxError(f"unknown key(s) {sorted(unknown)} for benchmark; valid keys: {sorted(BENCHMARK_KEYS)}")
    else:
        check_keys(args, {"seg_argmax"} if mode == "export" else set())
    if not args.get("model"):
        raise SyntaxError(f"{mode} needs model=path/to/best.pt (predict and val also take exported models)")
    return args


def predict(model: UnifiedYOLO, **args: Any) -> Path:
    """``yolo-unified predict``: annotated copies of every source image in ``runs/unified/predict*/``, streamed."""
    save_dir = run_dir(args.pop("project", None), args.pop("name", None), "predict", args.get("exist_ok"))
    for _ in model.predict(stream=True, save_dir=str(save_dir), **{"save": True, **args}):  # streamed: no pile-up
        pass
    return save_dir


def run(argv: list[str]) -> Any:
    """Dispatch one command line to ``getattr(UnifiedYOLO(model), mode)``; return what the mode returns."""
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(keys_help(argv[1:]) if argv[1:] else f"{HELP}\n{keys_help([])}")
        return None
    if argv[0] in {"--version", "-V", "version"}:
        print(yolo_unified.__version__)
        return None
    mode, rest = argv[0], argv[1:]
    if mode == "data":
        return prepare_data(rest)
    if mode not in MODES:
        raise SyntaxError(f"unknown mode '{mode}'; valid modes: {', '.join(MODES)}, help, --version")
    args = mode_args(mode, rest)
    if mode == "train":  # model= is a train key: a YOLOv8 checkpoint (not a unified one) gives its matching tensors
        return UnifiedYOLO().train(**args)
    model = UnifiedYOLO(args.pop("model"))
    if mode == "predict":
        return predict(model, **args)
    return getattr(model, mode)(**args)


def entrypoint() -> None:
    """Console-script entry point: run, turning input errors (bad keys, files missing, unreadable, not writable, and
    the checks Ultralytics makes with assert, e.g. resuming a finished run) into a one-line message and exit code 2,
    and Ctrl-C into a message and exit code 130."""
    try:
        run(sys.argv[1:])
    except (SyntaxError, OSError, ModuleNotFoundError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        LOGGER.error(f"yolo-unified: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        LOGGER.error("yolo-unified: interrupted")
        sys.exit(130)
