"""Multi-process training on CPU: processes started by ``torchrun`` (``device=cpu``) train one model with DDP over
gloo; rank 0 alone validates, writes checkpoints and does a protocol's between-stage work, the others wait and read it.

    torchrun --nproc_per_node 2 -m yolo_unified train cfg=cfg/seq.yaml device=cpu   # one machine, 2 processes"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import torch
import torch.distributed as dist
from ultralytics.utils import RANK, WORLD_SIZE

DDP = torch.nn.parallel.DistributedDataParallel  # the class itself, kept before the trainers patch its name


def cpu_workers(device: Any) -> bool:
    """Whether this process is one of several started by torchrun to train on the CPU (``device=cpu``)."""
    return WORLD_SIZE > 1 and RANK != -1 and str(device).lower() == "cpu"


def init_cpu_group() -> None:
    """Join the gloo process group of the torchrun workers (once per process; the stages of a protocol share it)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=RANK, world_size=WORLD_SIZE, timeout=timedelta(hours=3))


def from_rank_zero(obj: Any) -> Any:
    """`obj` as rank 0 has it, on every rank (unchanged without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_rank_zero() -> None:
    """Block every rank until all reach this point (rank 0 after its writes): a no-op without a process group."""
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_alone() -> Iterator[None]:
    """Work rank 0 does while the other ranks wait elsewhere (final validation, a stage's memory and reports), run as
    a single process runs it: Ultralytics' modules see ``RANK == -1`` (no gathering of validation statistics from
    ranks that are not there, the device chosen as outside DDP) and no process group (its rank-0-first barriers are
    skipped), else rank 0 would meet the other ranks' next collective with one of its own."""
    if not dist.is_initialized():
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(patch.object(dist, "is_initialized", lambda: False))
        for module in [m for name, m in sys.modules.items() if name.startswith("ultralytics") and m is not None]:
            if getattr(module, "RANK", None) == RANK:
                stack.enter_context(patch.object(module, "RANK", -1))
        yield


class CpuDDP(DDP):
    """DistributedDataParallel for a CPU module: Ultralytics passes ``device_ids=[device.index]``, which CPU modules
    must not be given. (A class, as what it stands in for: Ultralytics' ``is_parallel`` checks against it.)"""

    def __init__(self, module: torch.nn.Module, device_ids: list | None = None, **kwargs: Any) -> None:
        """Wrap `module` without device ids."""
        super().__init__(module, **kwargs)


def mean_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors` averaged over the DDP ranks in one all-reduce; unchanged without a process group."""
    if not dist.is_initialized() or not tensors:
        return tensors
    flat = torch.cat([t.detach().flatten().float() for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [m.view_as(t).to(t.dtype) for t, m in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True)]


def max_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of `tensor` over the DDP ranks; unchanged without a process group."""
    if not dist.is_initialized():
        return tensor
    top = tensor.detach().clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return top


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace the ``.grad`` of `params` by its mean over the DDP ranks, in one all-reduce (what DDP's backward does:
    the gradient of the mean of the ranks' losses). A parameter without a gradient on some ranks counts as zero
    there; one without a gradient on any rank keeps none (an optimizer skips it, as in one process). Every rank must
    pass the same parameters."""
    params = list(params)
    if not dist.is_initialized() or not params:
        return
    anywhere = max_over_ranks(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
    params = [p for p, has in zip(params, anywhere.tolist(), strict=True) if has]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    for p, mean in zip(params, mean_over_ranks(grads), strict=True):
        p.grad = mean


class SameStart(DDP):
    """In place of DistributedDataParallel for a trainer that averages its gradients itself (joint training):
    ``SameStart(module)`` is `module` itself, its parameters and buffers broadcast from rank 0. (A class, as what it
    stands in for: Ultralytics' ``is_parallel`` checks against it.)"""

    def __new__(cls, module: torch.nn.Module, **_: Any) -> torch.nn.Module:  # type: ignore[misc]
        """Broadcast `module`'s tensors from rank 0 and return it unwrapped."""
        if dist.is_initialized():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)
        return module


def digest(obj: Any) -> str:
    """A content hash of nested dicts/lists of tensors, arrays and plain values (the strategies' memory)."""
    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                add(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                add(v)
        elif isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(x).encode())

    add(obj)
    return h.hexdigest()


def same_on_every_rank(memory: dict[str, Any]) -> dict[str, Any]:
    """`memory` after checking that every DDP rank holds the same (each read rank 0's checkpoint); else an error."""
    if dist.is_initialized():
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest(memory))
        if len(set(digests)) > 1:
            raise RuntimeError(f"DDP ranks hold different strategy memory (digests {digests}): a file-system problem?")
    return memory
