"""The shared names: the task table, module groups, image sizes of checkpoints."""

from types import SimpleNamespace

from yolo_unified.common import PRIMARY_METRIC, TASK_TABLE, TASKS, ULTRALYTICS_TASK, module_of, task_imgsz
from yolo_unified.models.unified.train import TRAINERS
from yolo_unified.models.unified.val import VALIDATORS
from yolo_unified.nn import UnifiedModel
from yolo_unified.workflows.report import COLUMNS, PRIMARY


def test_the_task_table_is_what_every_layer_reads():
    assert TASKS == ("seg", "det", "cls")
    assert ULTRALYTICS_TASK == {"seg": "semantic", "det": "detect", "cls": "classify"}
    assert PRIMARY_METRIC == {"seg": "metrics/mIoU", "det": "metrics/mAP50(B)", "cls": "metrics/accuracy_top1"}
    assert list(COLUMNS) == ["mIoU", "mAP50", "mAP50-95", "top-1"]  # the forgetting report's columns, in task order
    assert {t: COLUMNS[PRIMARY[t]] for t in TASKS} == {t: (t, PRIMARY_METRIC[t]) for t in TASKS}
    for task, info in TASK_TABLE.items():  # the trainers and validators are Ultralytics' of the table's task
        for cls in TRAINERS[task], VALIDATORS[task]:
            theirs = next(c for c in cls.__mro__ if c.__module__.startswith("ultralytics"))
            assert theirs.__module__.split(".")[3] == info.ultralytics_task


def test_every_parameter_of_the_model_has_a_module_group():
    groups = {module_of(name) for name, _ in UnifiedModel(verbose=False).named_parameters()}
    assert groups == {"backbone", "neck", "tower", "det", "seg", "cls"}
    assert module_of("model.11.dfl.conv.weight") == "det" and module_of("model.10") == "neck"


def test_task_imgsz_reads_the_field_and_falls_back_to_older_checkpoints():
    model = SimpleNamespace(task_imgsz={"seg": 320, "det": 320, "cls": 160}, args={"imgsz": 160})
    assert (task_imgsz(model, "cls"), task_imgsz(model, "seg"), task_imgsz(model)) == (160, 320, 320)
    older = SimpleNamespace(args={"imgsz": 320})  # saved before task_imgsz: its training size for every task
    assert (task_imgsz(older, "cls"), task_imgsz(older)) == (320, 320)
    assert task_imgsz(SimpleNamespace(args=SimpleNamespace(imgsz=64)), "det") == 64  # a trainer's args namespace
