"""The HW2 benchmark command in quick mode: every run, table and file is produced, with finite numbers."""

import json
import math

from ultralytics.utils import YAML

from benchmarks.hw2 import ABLATIONS, ablation_cfg, main
from yolo_unified.nn.tasks import CFG_DIR


def test_ablation_cfgs_change_one_thing_each():
    seq = YAML.load(CFG_DIR / "seq.yaml")
    plain = ablation_cfg(seq, (), staged=False)
    for stage in plain["stages"]:
        assert not any(stage.get(k) for k in ("ewc", "lr_mult", "bn_freeze", "lwf", "replay", "forget_stop"))
        assert stage["clip_grad"] == 10.0 and stage["lr0"] == seq["stages"][0]["lr0"]
    staged = ablation_cfg(seq, (), staged=True)
    assert [s["lr0"] for s in staged["stages"]] == [s["lr0"] for s in seq["stages"]]
    lwf = ablation_cfg(seq, ("lwf",), staged=False)
    assert "lwf" not in lwf["stages"][0] and all(s["lwf"] for s in lwf["stages"][1:])
    ewc = ablation_cfg(seq, ("ewc",), staged=False)["stages"]
    assert ewc[0]["ewc"] == seq["stages"][0]["ewc"] and all(s["ewc"]["lam"] > 0 for s in ewc[1:])


def test_quick_benchmark_writes_every_table(synth_yaml, tmp_path):
    out = tmp_path / "quick"
    results = main([f"data={synth_yaml}", "quick=True", "seeds=1", f"out={out}"])
    expected = {"baselines", "default_seed0", *(name for name, *_ in ABLATIONS)}
    assert set(results["runs"]) == expected
    saved = json.loads((out / "results.json").read_text())
    for name, run in saved["runs"].items():
        tasks = {"seg", "det", "cls"}
        assert set(run["final"]) == tasks, name
        for entry in run["final"].values():
            lo, hi = entry["ci95"]
            assert math.isfinite(entry["value"]) and lo <= hi and entry["n_images"] == 4
        if name != "baselines":
            assert set(run["forgetting"]) == tasks and run["verdict"].startswith(("PASS", "FAIL"))
    summary = (out / "summary.md").read_text()
    for heading in ("Single-task baselines", "Sequential protocol", "Ablations", "Efficiency", "report B"):
        assert heading in summary
    assert summary.count("| no mitigation") == 1 and "| replay alone |" in summary
    assert (out / "speed" / "benchmark.md").is_file()
    again = main([f"data={synth_yaml}", "quick=True", "seeds=1", f"out={out}", "bootstrap=10"])  # no retraining
    assert all(run["wall_minutes_this_call"] < 0.5 for run in again["runs"].values())
