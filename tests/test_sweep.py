"""The stability/plasticity sweep: grid parsing and naming, the front, quick mode end to end on the tiny data."""

import json

import pytest
from ultralytics.utils import YAML

from benchmarks.sweep import configuration_records, main, parse_grid, rank_configs, select
from yolo_unified.continual import STRATEGIES
from yolo_unified.nn.tasks import CFG_DIR
from yolo_unified.workflows.protocol import read_state

GRID = {
    "stages": [
        {"task": "det", "epochs": 2, "lr0": 0.001, "lr_mult": {"seg": 0.0, "det": 5.0, "cls": 0.0}},
        {"task": "cls", "epochs": 2, "imgsz": 160, "lr0": 0.0005, "lr_mult": {"seg": 0.0, "det": 0.0, "cls": 40.0}},
    ],
    "shared": [0.0, 0.1],
    "with_shared": [0.1, 0.03],
    "strategies": {
        "ewc": {"param": "lam", "values": [1.0, 10.0], "fixed": {"samples": 8}},
        "lwf": {"param": "weight", "values": [0.3], "fixed": {"temperature": 2.0}},
        "replay": {"param": "size", "values": [4]},
    },
    "combined": [{"ewc": {"lam": 1.0}, "lwf": {"weight": 0.3}}],
}

PROTOCOL = [  # the swept protocol's stages: its stage 3 differs from the grid's (epochs), to tell them apart
    {"task": "seg", "epochs": 2},
    GRID["stages"][0],
    {**GRID["stages"][1], "epochs": 3},
]


def test_grid_names_and_stage_settings():
    configs = {c.name: c for c in parse_grid(GRID, PROTOCOL)}
    per_shared = ["ewc1", "ewc10", "lwf0.3", "replay4", "ewc1+lwf0.3"]
    assert list(configs) == ["shared0", "shared0.1", *(f"shared{m}-{s}" for m in ("0.1", "0.03") for s in per_shared)]
    frozen, both = configs["shared0"], configs["shared0.03-ewc1+lwf0.3"]
    chosen = [frozen, configs["shared0.1"], both]
    runs = {c.name: {"configuration": c.name, "seed": 0, "pass": True, "metrics": {"minutes": 2.0}} for c in chosen}
    records = configuration_records(chosen, runs)
    assert records["shared0"]["frozen"] and records["shared0"]["family"] == "none"
    assert not records["shared0.1"]["frozen"] and records[both.name]["family"] == "ewc+lwf"
    assert records["shared0"]["metrics"]["minutes"] == {"mean": 2.0, "min": 2.0, "max": 2.0}
    for stage, own in zip(both.stages, GRID["stages"], strict=True):  # the shared multiplier and the strategies in both
        assert stage["lr_mult"] == {"backbone": 0.03, "neck": 0.03, "tower": 0.03, **own["lr_mult"]}
        assert stage["ewc"] == {"samples": 8, "lam": 1.0} and stage["lwf"] == {"temperature": 2.0, "weight": 0.3}
        assert {k: v for k, v in stage.items() if k not in {"lr_mult", "ewc", "lwf"}} == {
            k: v for k, v in own.items() if k != "lr_mult"
        }
    assert both.shared == 0.03
    ewc10 = configs["shared0.1-ewc10"].stages
    assert ewc10[0]["ewc"]["lam"] == ewc10[1]["ewc"]["lam"] == 10.0 and "lwf" not in ewc10[1]
    assert all("ewc" not in s for s in frozen.stages) and frozen.stages[0]["lr_mult"]["backbone"] == 0.0
    assert GRID["stages"][0]["lr_mult"] == {"seg": 0.0, "det": 5.0, "cls": 0.0}  # the grid itself is left as it was
    assert [c.name for c in parse_grid(GRID, PROTOCOL, quick=True)] == ["shared0", "shared0.1", "shared0.1-ewc1"]
    chosen = select(list(configs.values()), "shared0.1-lwf0.3,shared0")
    assert [c.name for c in chosen] == ["shared0.1-lwf0.3", "shared0"]  # in the order named: the run order
    with pytest.raises(ValueError, match="no configuration \\['shared9'\\]"):
        select(list(configs.values()), "shared9")
    held = {"task": "cls", "vary": False}  # the protocol's own stage 3 in every configuration
    for config in parse_grid({**GRID, "stages": [GRID["stages"][0], held]}, PROTOCOL):
        assert config.stages[1] == PROTOCOL[2]
        assert config.stages[0]["lr_mult"]["neck"] == config.shared


def test_grid_errors_name_the_culprit():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*known strategies: .*ewc"):
        parse_grid({**GRID, "strategies": {**GRID["strategies"], "nope": {"param": "w", "values": [1]}}}, PROTOCOL)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_grid({**GRID, "combined": [{"nope": {"w": 1}}]}, PROTOCOL)
    with pytest.raises(ValueError, match="unknown strategy 'lr_mult' \\(the shared multiplier sets lr_mult\\)"):
        parse_grid({**GRID, "strategies": {"lr_mult": {"param": "det", "values": [1]}}}, PROTOCOL)
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['shard'\\]"):
        parse_grid({**GRID, "shard": [0.1]}, PROTOCOL)
    with pytest.raises(ValueError, match="lack its strength 'lam'"):
        parse_grid({**GRID, "combined": [{"ewc": {"samples": 8}}]}, PROTOCOL)
    with pytest.raises(ValueError, match="appear twice"):
        parse_grid({**GRID, "shared": [0.1, 0.10]}, PROTOCOL)
    with pytest.raises(ValueError, match="would vary nothing"):
        parse_grid({**GRID, "stages": [{**s, "vary": False} for s in GRID["stages"]]}, PROTOCOL)
    held = [GRID["stages"][0], {"task": "cls", "vary": False, "epochs": 3}]
    with pytest.raises(ValueError, match="the protocol's own cls stage; drop \\['epochs'\\]"):
        parse_grid({**GRID, "stages": held}, PROTOCOL)
    with pytest.raises(ValueError, match="exactly one cls stage to hold, not 0"):
        parse_grid({**GRID, "stages": [GRID["stages"][0], {"task": "cls", "vary": False}]}, PROTOCOL[:2])


def test_front_is_within_the_limit_by_retention_then_least_forgetting():
    stats = {  # name: (worst forgetting, mean retention)
        "frozen": (0.0, 0.3), "a": (0.02, 0.5), "b": (0.2, 0.9), "dominated": (0.3, 0.4), "c": (0.02, 0.45),
    }  # fmt: skip
    stats = {n: {"worst_forgetting_stage3": {"mean": f}, "mean_retention": {"mean": r}} for n, (f, r) in stats.items()}
    # within the 5% limit first, by retention; then the rest by worst forgetting, unknown last
    assert rank_configs(list(stats), stats, 0.05) == ["a", "c", "frozen", "b", "dominated"]
    stats["unknown"] = {"worst_forgetting_stage3": {"mean": None}, "mean_retention": {"mean": None}}
    assert rank_configs(list(stats), stats, 0.0) == ["frozen", "a", "c", "b", "dominated", "unknown"]


@pytest.mark.skipif(
    not {"pseudo_label", "feat_distill"} <= set(STRATEGIES), reason="cfg/sweep.yaml names strategies not there yet"
)
def test_packaged_grid_parses():
    names = [c.name for c in parse_grid(YAML.load(CFG_DIR / "sweep.yaml"), YAML.load(CFG_DIR / "seq.yaml")["stages"])]
    assert "shared0" in names and "shared0.1-ewc1+pseudo_label1" in names
    protocol = YAML.load(CFG_DIR / "seq-pretrained.yaml")["stages"]
    pretrained = {c.name: c for c in parse_grid(YAML.load(CFG_DIR / "sweep-pretrained.yaml"), protocol)}
    assert all(c.stages[1] == protocol[2] for c in pretrained.values())  # stage 3 held, as the protocol writes it
    assert protocol[2]["lr_mult"]["backbone"] == 0.01


@pytest.mark.slow
def test_quick_sweep_shares_stage_one_and_resumes(synth_yaml, tmp_path):
    grid = tmp_path / "grid.yaml"
    YAML.save(grid, GRID)
    out = tmp_path / "sweep"
    argv = [f"data={synth_yaml}", "quick=True", f"out={out}", f"grid={grid}", "seeds=2", "front=1"]
    results = main(argv)
    grid_runs = ["shared0", "shared0.1", "shared0.1-ewc1"]
    assert set(results["configurations"]) == set(grid_runs)
    assert len(results["front"]) == 1 and results["configurations"][results["front"][0]]["seeds"] == [0, 1]
    assert set(results["runs"]) == {f"{n}-seed0" for n in grid_runs} | {f"{results['front'][0]}-seed1"}
    for name in ("summary.md", "results.json"):
        assert (out / name).is_file(), name
    base_stage1 = read_state(out / "base/default_seed0")["stages"][0]  # its paths resolved against its folder
    for name, run in results["runs"].items():
        assert (out / name / "3-cls/weights/best.pt").is_file() and not (out / name / "1-seg").exists()  # shared
        assert run["stages"][0]["weights"] == base_stage1["weights"]
        metrics = run["metrics"]
        assert {"det_stage2", "seg_forgetting_stage2", "cls_stage3", "worst_forgetting_stage3"} <= set(metrics)
        drops = metrics["seg_forgetting_stage3"], metrics["det_forgetting_stage3"]
        assert metrics["worst_forgetting_stage3"] == max(drops)
        assert run["pass"] == (metrics["worst_forgetting_stage3"] <= 0.05)
    ewc = json.loads((out / "shared0.1-ewc1-seed0/protocol.json").read_text())["config"]["stages"]
    assert ewc[1]["lr_mult"]["backbone"] == ewc[2]["lr_mult"]["tower"] == 0.1 and ewc[1]["ewc"] == ewc[2]["ewc"]
    assert ewc[1]["epochs"] == 1 and ewc[2]["imgsz"] == 64  # quick mode's overrides
    summary = (out / "summary.md").read_text()
    assert "| shared0.1-ewc1 |" in summary and "## Recommended" in summary and "python -m benchmarks.sweep" in summary
    if results["recommended"]:
        assert "```yaml\nstages:" in summary
    else:
        assert "None: no configuration" in summary
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"].keys() == results["runs"].keys() and set(saved["base"]["single_task"]) == {"seg", "det", "cls"}

    weights = {p: p.stat().st_mtime_ns for p in out.glob("*/*/weights/best.pt")}
    again = main(argv)  # finished runs and the base: nothing is retrained
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/weights/best.pt")} == weights
    assert again["front"] == results["front"] and len(again["invocations"]) == 2
    assert all(run["metrics"] == results["runs"][name]["metrics"] for name, run in again["runs"].items())
    elsewhere = main(
        [*argv[:2], f"out={tmp_path / 'other'}", f"grid={grid}", "seeds=1", "only=shared0", f"base={out}/base"]
    )
    assert elsewhere["base"]["root"] == results["base"]["root"] and not (tmp_path / "other/base").exists()
    assert elsewhere["runs"]["shared0-seed0"]["stages"][0]["weights"] == base_stage1["weights"]  # base= reused
    with pytest.raises(FileNotFoundError, match="base=.*no benchmarks.hw2 results.json"):
        main([*argv, f"base={tmp_path}"])
    with pytest.raises(ValueError, match="trained with pretrained=None \\(this sweep: yolov8n.pt\\)"):
        main([*argv, "pretrained=yolov8n.pt"])  # the shared stage 1 would not be this sweep's
    YAML.save(grid, {**GRID, "stages": [{**GRID["stages"][0], "lr0": 0.01}, GRID["stages"][1]]})
    with pytest.raises(ValueError, match="other stage-2/3 settings"):  # a changed recipe does not resume old runs
        main(argv)
