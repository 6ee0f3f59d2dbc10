"""What a model knows, carried in its checkpoint: written by every kind of training, kept across commands, shown by
``yolo-unified info``."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from ultralytics.utils.torch_utils import strip_optimizer

from yolo_unified import UnifiedYOLO, workflows
from yolo_unified.common import STATE_FILE
from yolo_unified.data.class_split import split_classes
from yolo_unified.data.config import image_files, label_file, load_data_config
from yolo_unified.data.synthetic import make_synthetic
from yolo_unified.files import read_checkpoint
from yolo_unified.workflows.knowledge import KNOWLEDGE, describe, key, knowledge_of, known_lines, known_scores
from yolo_unified.workflows.single import class_coverage

TINY = {"imgsz": 64, "batch": 4, "workers": 0, "plots": False, "epochs": 1, "exist_ok": True}


@pytest.fixture(scope="module")
def two_commands(synth_yaml, tmp_path_factory) -> tuple[Path, Path]:
    """A seg model, then a det model trained from it by a second command: their best.pt."""
    root = tmp_path_factory.mktemp("knowledge")
    seg = workflows.train(task="seg", data=synth_yaml, project=str(root), name="seg", **TINY)["weights"]
    det = workflows.train(task="det", data=synth_yaml, model=seg, project=str(root), name="det", **TINY)["weights"]
    return Path(seg), Path(det)


def by_task(record: dict) -> dict[str, dict]:
    """The record's groups by task (one each here)."""
    return {g["task"]: g for g in record["learned"]}


def test_each_command_adds_what_it_trained_and_keeps_what_the_model_knew(two_commands, synth_yaml):
    seg, det = (by_task(knowledge_of(w)) for w in two_commands)
    assert list(seg) == ["seg"] and len(knowledge_of(two_commands[0])["commands"]) == 1
    assert seg["seg"]["classes"] == ["background", "circle", "rectangle", "triangle"]
    assert seg["seg"]["data"] == str(Path(synth_yaml).resolve()) and seg["seg"]["metric"]
    assert set(det) == {"seg", "det"} and det["seg"] == seg["seg"]
    commands = knowledge_of(two_commands[1])["commands"]
    assert [c["trained"] for c in commands] == [["seg"], ["det"]]
    assert f"model={two_commands[0]}" in commands[1]["command"]
    assert commands[1]["scores"][key(det["det"])] == det["det"]["score"]  # scored right after its training


def test_the_record_survives_stripping_and_loading(two_commands, tmp_path):
    copy = tmp_path / "best.pt"
    shutil.copy(two_commands[1], copy)
    strip_optimizer(copy)
    assert read_checkpoint(copy)[KNOWLEDGE] == knowledge_of(two_commands[1])
    assert describe(copy).splitlines()[1:] == describe(two_commands[1]).splitlines()[1:]  # all but the path: memory too
    UnifiedYOLO(copy).info()  # Ultralytics' layer summary, then the record


def test_info_says_what_the_model_knows_and_whether_its_data_is_still_there(two_commands, synth_yaml, tmp_path):
    text = describe(two_commands[1])
    assert "seg   mIoU" in text and "det   mAP50" in text and text.count("(found)") == 2
    for g in knowledge_of(two_commands[1])["learned"]:  # each group's score on its stored images, as recorded
        assert f"{g['score']:.3f}  {g['stored']['score']:.3f} ({g['stored']['images']})" in text
    assert "1. " in text and "2. " in text and "trained det" in text
    section = load_data_config(synth_yaml)["tasks"]["det"]
    label = label_file(image_files(section["val"])[0], "det", section)
    kept = label.read_text()
    try:
        label.write_text("0 0.5 0.5 0.1 0.1\n")  # a relabelled val set is not the data the score was measured on
        assert "(changed)" in describe(two_commands[1])
    finally:
        label.write_text(kept)
    moved = tmp_path / "moved.pt"
    record = read_checkpoint(two_commands[1])
    by_task(record[KNOWLEDGE])["seg"]["data"] = str(tmp_path / "gone.yaml")
    torch.save(record, moved)
    assert "gone.yaml (missing)" in describe(moved)


def test_a_protocol_records_each_tasks_own_score_and_the_final_scores(synth_yaml, tmp_path):
    stages = [{"task": "seg"}, {"task": "cls"}]
    workflows.train(data=synth_yaml, stages=stages, project=str(tmp_path), name="p", **TINY)
    state = json.loads((tmp_path / "p" / STATE_FILE).read_text())
    record = knowledge_of(tmp_path / "p" / "weights" / "best.pt")
    assert {t: g["score"] for t, g in by_task(record).items()} == {s["task"]: s["own_score"] for s in state["stages"]}
    (command,) = record["commands"]
    assert command["trained"] == ["seg", "cls"] and set(command["scores"]) == {key(g) for g in record["learned"]}


def test_a_checkpoint_without_a_record_says_so(two_commands, synth_yaml, tmp_path, logged):
    """Bad input: a model trained before records were kept; info says so, and a later run trains as before, saying
    that its tasks are neither kept nor scored and how to keep them."""
    old = tmp_path / "old.pt"
    ckpt = read_checkpoint(two_commands[0])
    ckpt.pop(KNOWLEDGE)
    torch.save(ckpt, old)
    assert knowledge_of(old) == {"learned": [], "commands": []}
    assert "no record of what it learned" in describe(old)
    workflows.train(task="det", data=synth_yaml, model=str(old), project=str(tmp_path), name="det", **TINY)
    warned = [r.message for r in logged.records if "before yolo-unified kept a record" in r.message]
    assert (
        len(warned) == 1
        and "learned seg" in warned[0]
        and 'lr_mult="{backbone: 0, neck: 0, tower: 0, seg: 0}"' in warned[0]
    )


def test_a_later_command_scores_what_the_model_knew_on_its_recorded_data(two_commands):
    record = knowledge_of(two_commands[1])
    second, seg = record["commands"][1], by_task(record)["seg"]
    assert set(second["scores"]) == {key(g) for g in record["learned"]}  # seg, which it did not train, scored too
    assert 0 <= second["scores"][key(seg)] <= 1


BEFORE = {"learned": [{"task": "seg", "score": 0.8, "metric": "metrics/mIoU", "data": "/data/a.yaml"},
                      {"task": "det", "score": 0.5, "metric": "metrics/mAP50(B)", "data": "/data/b.yaml"}]}  # fmt: skip


@pytest.mark.parametrize(
    "now, held, shown",
    [
        ({"seg /data/a.yaml": 0.79, "det /data/b.yaml": 0.5}, True, ["seg  mIoU   0.790  forgetting  +1.2%  PASS"]),
        ({"seg /data/a.yaml": 0.2, "det /data/b.yaml": 0.5}, False, ["seg  mIoU   0.200  forgetting +75.0%  FAIL"]),
        ({"seg /data/a.yaml": 0.8, "det /data/b.yaml": "missing"}, False, ["det  not scored: its val data /data/b."]),
    ],
)
def test_a_known_task_passes_only_when_scored_and_held(now, held, shown):
    lines, ok = known_lines(BEFORE, now, 0.05)
    assert ok is held and all(any(s in line for line in lines) for s in shown), lines


def test_a_protocol_from_a_model_that_knows_more_scores_it_too(two_commands, synth_yaml, tmp_path, logged):
    stages = [{"task": "cls"}]
    workflows.train(data=synth_yaml, stages=stages, model=str(two_commands[1]), project=str(tmp_path), name="p", **TINY)
    summary = next(r.message for r in logged.records if "Summary" in r.message)
    rows = [line.split()[0] for line in summary.splitlines() if "forgetting " in line]
    assert rows == ["cls", "seg", "det"] and "learned before this command" in summary  # and the tasks it knew
    record = knowledge_of(tmp_path / "p" / "weights" / "best.pt")
    assert set(by_task(record)) == {"seg", "det", "cls"}
    assert set(record["commands"][-1]["scores"]) == {key(g) for g in record["learned"]}


@pytest.mark.parametrize("form", ["task", "protocol"])
def test_a_second_command_keeps_what_the_first_taught_unless_protect_is_off(form, tmp_path, logged):
    """Classification (48 images at 64 px), then detection at the full rate in a second command from that model, as one
    task or as a one-stage protocol: protected by default (cfg/protect.yaml), it keeps classification far better than
    a plain fine-tune."""
    data = str(make_synthetic(tmp_path / "data", n_train=48, n_val=24, imgsz=64, seed=0))
    keys = {**TINY, "batch": 8, "optimizer": "AdamW", "warmup_epochs": 0, "project": str(tmp_path), "data": data}
    stored = {"size": 48, "batch": 0}  # every training image stored (the default 10%, 4 images, is a coin toss here)
    first = workflows.train(task="cls", lr0=0.002, name="cls", replay=stored, **{**keys, "epochs": 20})["weights"]
    detection = {"task": "det"} if form == "task" else {"stages": [{"task": "det"}]}
    after = {}
    for protect in (True, False):
        run = workflows.train(
            **detection, lr0=0.01, model=first, protect=protect, name=f"det-{protect}", **{**keys, "epochs": 6}
        )
        after[protect] = knowledge_of(run["weights"])["commands"][-1]["scores"][
            key(by_task(knowledge_of(first))["cls"])
        ]
    own = by_task(knowledge_of(first))["cls"]["score"]
    assert own > 0.5 and after[False] < own - 0.15 and after[True] > after[False] + 0.1, (own, after)
    assert any("protect=False: a plain fine-tune; cls, which" in r.message for r in logged.records)


def test_a_command_adding_classes_keeps_and_scores_the_old_class_group(tmp_path, logged):
    """Detection of circle and rectangle, then a second command whose data labels triangle only: the run applies
    cfg/protect.yaml's ``classes:`` recipe, and the record keeps the old group (scored on its own data) beside the
    new one."""
    data = make_synthetic(tmp_path / "data", n_train=16, n_val=12, imgsz=64, seed=0)
    old = split_classes(data, "det", ["circle", "rectangle"], tmp_path / "old")
    new = split_classes(data, "det", ["triangle"], tmp_path / "new")
    keys = {**TINY, "project": str(tmp_path)}
    first = workflows.train(task="det", data=str(old), name="old", **keys)["weights"]
    second = workflows.train(task="det", data=str(new), model=first, name="new", **keys)["weights"]
    record = knowledge_of(second)
    assert [(g["task"], g["classes"]) for g in record["learned"]] == [
        ("det", ["circle", "rectangle"]),
        ("det", ["triangle"]),
    ]
    assert set(record["commands"][-1]["scores"]) == {key(g) for g in record["learned"]}
    messages = [r.message for r in logged.records]
    assert any("protect: keeping det circle, rectangle" in m for m in messages)
    added = next(m for m in messages if "had 2 classes" in m)
    assert all(k in added.split("old classes kept by")[1] for k in ("old_labels", "old_distill")), added
    summary = next(m for m in messages if "Summary" in m)
    assert "det [circle, rectangle]  mAP50" in summary and "learned before this command" in summary
    assert "det [circle, rectangle]" in describe(second) and "det [triangle]" in describe(second)


def test_a_group_whose_val_data_is_gone_is_scored_on_its_stored_images(two_commands, tmp_path):
    """Bad input: the recorded val data is gone; the group is scored on the images the model stored, against its
    score on them right after its training, and the summary says so."""
    record = knowledge_of(two_commands[1])
    seg = by_task(record)["seg"]
    assert seg["stored"]["images"] >= 1 and 0 <= seg["stored"]["score"] <= 1  # recorded with the group
    gone = {**seg, "data": str(tmp_path / "gone.yaml")}
    (now,) = known_scores(two_commands[1], read_checkpoint(two_commands[1]), [gone], tmp_path).values()
    assert now["status"] == "missing" and now["images"] == seg["stored"]["images"] and 0 <= now["score"] <= 1
    lines, _ = known_lines({"learned": [gone]}, {key(gone): now}, 0.05)
    assert f"on its {now['images']} stored images, as its val data {gone['data']} is missing" in lines[0], lines
    stored = read_checkpoint(two_commands[1])[KNOWLEDGE]
    assert all("stored" in g for g in stored["learned"])


def test_data_labelling_only_some_known_classes_is_named(synth_yaml):
    """A known task whose new data labels some of its classes and adds none: the classes it leaves out are named (the
    run warns that it does not keep them)."""
    record = {"learned": [{"task": "det", "classes": ["circle", "rectangle", "triangle", "star"]}]}
    assert class_coverage(record, "det", synth_yaml) == ([], ["star"])  # adds none, leaves out star
    assert class_coverage(record, "seg", synth_yaml) == ([], [])  # a task the record does not know
