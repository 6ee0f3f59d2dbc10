"""Joint training's step on two processes (gloo): the same gradients as one process on the same global batch."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from yolo_unified.balancing import build_balancer
from yolo_unified.common import SHARED_MODULES, module_of
from yolo_unified.ddp import average_gradients
from yolo_unified.models.unified.joint import task_losses
from yolo_unified.nn import UnifiedModel

NAMES = {"seg": {0: "background", 1: "a", 2: "b"}, "det": {0: "a", 1: "b"}, "cls": {0: "a", 1: "b"}}
TASKS = ["seg", "det", "cls"]
WORLD = 2
METHODS = ("fixed", "upgrad")  # a loss-level and a gradient-level (TorchJD) method


def global_batches() -> dict[str, dict]:
    """Four images per task in Ultralytics' batch formats; rank r trains on images 2r and 2r + 1."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2], [0.6, 0.4, 0.3, 0.5], [0.4, 0.4, 0.5, 0.5]])
    return {
        "seg": {"img": torch.rand(4, 3, 64, 64, generator=g),
                "semantic_mask": torch.randint(0, 3, (4, 64, 64), generator=g, dtype=torch.int32)},
        "det": {"img": torch.rand(4, 3, 64, 64, generator=g), "bboxes": boxes,
                "cls": torch.tensor([[0.0], [1.0], [1.0], [0.0]]), "batch_idx": torch.tensor([0.0, 1.0, 2.0, 3.0])},
        "cls": {"img": torch.rand(4, 3, 64, 64, generator=g), "cls": torch.tensor([0, 1, 1, 0])},
    }  # fmt: skip


def half(batches: dict[str, dict], rank: int) -> dict[str, list[dict]]:
    """Rank `rank`'s share of every task's batch, as a joint step's ``{task: [batch]}``."""
    keep = slice(2 * rank, 2 * rank + 2)
    out = {}
    for task, b in batches.items():
        part = {k: v[keep] for k, v in b.items() if k not in {"bboxes", "cls", "batch_idx"} or task == "cls"}
        if task == "det":
            boxes = (b["batch_idx"] >= 2 * rank) & (b["batch_idx"] < 2 * rank + 2)
            part.update(bboxes=b["bboxes"][boxes], cls=b["cls"][boxes], batch_idx=b["batch_idx"][boxes] - 2 * rank)
        out[task] = [part]
    return out


def model_and_balancer(method: str) -> tuple[UnifiedModel, torch.nn.Module, list[torch.nn.Parameter]]:
    torch.manual_seed(0)
    model = UnifiedModel(task_names=NAMES, verbose=False).train()
    shared = [p for n, p in model.named_parameters() if module_of(n) in SHARED_MODULES]
    return model, build_balancer(method, TASKS), shared


def gradients(model: UnifiedModel, balancer: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = [*model.named_parameters(), *balancer.named_parameters()]
    return {n: p.grad.clone() for n, p in named if p.grad is not None}


def rank_steps(rank: int, port: int, out: str) -> None:
    """For each method: one joint step on this rank's half of the batch, gradients averaged as the joint trainer
    does; rank 0 saves them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    saved = {}
    for method in METHODS:
        model, balancer, shared = model_and_balancer(method)
        losses, _ = task_losses(model, half(global_batches(), rank), TASKS)
        total, _ = balancer.combine(losses, shared)
        if total is not None:
            total.backward()
        average_gradients(p for p in [*model.parameters(), *balancer.parameters()] if p.requires_grad)
        saved[method] = gradients(model, balancer)
    if rank == 0:
        torch.save(saved, out)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(method: str, got: dict[str, torch.Tensor]) -> None:
    """The one-process gradients of `method` against the two processes' (`got`)."""
    model, balancer, shared = model_and_balancer(method)
    halves = [task_losses(model, half(global_batches(), r), TASKS)[0] for r in range(WORLD)]
    losses = {t: sum(h[t] for h in halves) / WORLD for t in TASKS}
    total, _ = balancer.combine(losses, shared)
    if total is not None:
        total.backward()
    expected = gradients(model, balancer)
    assert set(got) == set(expected) and len(expected) > 100, method
    for name, grad in expected.items():
        where = f"{method} {name}"
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    """Each task's loss averaged over the two halves in one process, then combined: the gradients two processes get
    (a loss-level total averaged by the all-reduce; a gradient-level method aggregating the task gradients averaged
    over the ranks)."""
    out = str(tmp_path / "ddp.pt")
    mp.spawn(rank_steps, args=(free_port(), out), nprocs=WORLD, join=True)
    got = torch.load(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: other thread counts sum in another order (1e-4 apart in layer 0)
    try:
        for method in METHODS:
            compare(method, got[method])
    finally:
        torch.set_num_threads(threads)
