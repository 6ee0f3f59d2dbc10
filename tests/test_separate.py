"""The separate Ultralytics models (benchmarks.separate): with pretrained weights a second run per task with the
pretrained layers frozen, the better run kept."""

import torch
from ultralytics.nn.tasks import ClassificationModel

from benchmarks.common import QUICK, repo_path
from benchmarks.hw2 import separate_table
from benchmarks.separate import FROZEN, train_separate


def test_pretrained_runs_twice_and_keeps_the_better(synth_yaml, tmp_path):
    pretrained = tmp_path / "cls.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)}, pretrained)
    out = tmp_path / "separate"
    settings = {"imgsz": 64, "pretrained": str(pretrained)}
    results = train_separate(synth_yaml, out, settings, QUICK, 10)
    start = torch.load(next(out.glob("*-layers0-8.pt")), weights_only=False)["model"].model
    for task, r in results.items():
        runs = r["runs"]
        assert list(runs) == ["trained", "frozen"] and r["final"] == runs[r["kept"]]["final"]
        assert max(run["final"]["value"] for run in runs.values()) == r["final"]["value"]
        assert runs["trained"]["trained_params"] == r["params"] > runs["frozen"]["trained_params"] > 0
        assert (out / f"{task}-freeze" / "results.csv").is_file()
        frozen = torch.load(repo_path(runs["frozen"]["weights"]), weights_only=False)["model"].model
        for i in range(FROZEN):  # the pretrained layers, BatchNorm statistics included, left as loaded
            for (key, kept), loaded in zip(frozen[i].state_dict().items(), start[i].state_dict().values(), strict=True):
                assert torch.equal(kept.float(), loaded.half().float()), (task, i, key)
    record = {"runs": {"baselines": {"final": {}}}, "speed": {"rows": [{"params": 1e6}]}, "separate": results}
    table = "\n".join(separate_table(record))
    assert table.count("pretrained layers 0-8 frozen (freeze=9)") == 3 and table.count(" (kept) |") == 3
    again = train_separate(synth_yaml, out, settings, QUICK, 10)  # finished: skipped, scored again alike
    assert all(run["minutes_this_call"] < 0.2 for r in again.values() for run in r["runs"].values())
