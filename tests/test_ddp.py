"""Two-process DDP on the CPU (gloo), started by torchrun: a tiny protocol with a joint stage (UPGrad), then EWC,
replay and forget_stop."""

import os
import re
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist
import yaml

from yolo_unified.ddp import digest
from yolo_unified.workflows.base import stage_memory

STAGES = [
    {"tasks": ["det", "cls"], "epochs": 1, "balance": "upgrad"},  # joint: gradients averaged over the ranks
    {"task": "seg", "epochs": 2, "replay": {"size": 2}, "ewc": {"samples": 4}},
    {"task": "det", "epochs": 2, "ewc": {"lam": 1.0, "samples": 4}, "replay": {"size": 2, "ratio": 0.5},
     "forget_stop": {"every": 1}},
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_two_process_cpu_protocol(synth_yaml, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump({"imgsz": 64, "batch": 8, "nbs": 8, "workers": 0, "plots": False, "stages": STAGES}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "yolo_unified", "train", f"cfg={cfg}", f"data={synth_yaml}", "device=cpu", f"project={tmp_path}",
           "name=ddp"]  # fmt: skip
    env = {**os.environ, "YOLO_UNIFIED_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # without colours
    assert out.returncode == 0, log[-3000:]
    assert "DDP: rank 0 of 2 on the CPU" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "ddp.yaml"]  # one run folder: rank 0's
    root = tmp_path / "ddp"
    state = yaml.safe_load((root / "protocol.json").read_text())
    assert [s["task"] for s in state["stages"]] == ["det+cls", "seg", "det"] and (root / "forgetting.md").is_file()
    assert (root / "1-det+cls/diagnostics.csv").read_text().count("\n") == 2  # header and the one epoch, written once
    memory = stage_memory(str(root / "2-seg" / "weights" / "best.pt"))
    assert set(memory) >= {"ewc", "replay"} and len(memory["replay"]["seg"]) == 2
    final = stage_memory(str(root / "weights" / "best.pt"))
    assert len(final["replay"]["det"]) == 2 and digest(final["replay"]["seg"]) == digest(memory["replay"]["seg"])
    assert not list(root.rglob("*.tmp"))  # no half-written file from a second writer
