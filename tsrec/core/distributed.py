"""Multi-process runs (``torchrun``, ``accelerate launch``): who this process is, its device, the process group.

The launcher sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``. On CUDA each rank is put on GPU ``LOCAL_RANK``
*before* the (nccl) process group starts; on CPU the group is gloo. Used by training (tsrec.model.sft) and RL (tsrec.model.grpo).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the launch (1 process, rank 0 without a launcher)."""
    env = os.environ
    return World(int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")))


def resolve_device(requested: str = "auto", w: World | None = None) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` (tsrec.core.precision.resolve_device; ValueError if unusable) -> a device. Under a
    multi-process launch ``auto`` / ``cuda`` mean GPU ``LOCAL_RANK`` (one GPU per process)."""
    from tsrec.core.precision import resolve_device as resolve_name

    device = torch.device(resolve_name(requested or "auto"))
    w = w or world()
    if device.type == "cuda" and device.index is None and w.distributed:
        device = torch.device("cuda", w.local_rank)
    return device


def init(device: torch.device | str) -> World:
    """Start the process group for a multi-process launch (no-op for one process or when already started):
    nccl with this rank's GPU set first on CUDA, gloo on CPU. Returns the world."""
    w = world()
    device = torch.device(device)
    if not w.distributed:
        return w
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the group: nccl binds each rank to its current device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
        log.info("process group: rank %d of %d on %s (%s)", w.rank, w.size, device, dist.get_backend())
    return w


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_grads(tensors, bucket: int = 1 << 25) -> None:
    """Sum the gradients of ``tensors`` over the processes (in buckets of ``bucket`` elements; a missing
    gradient counts as zeros). The caller scales each process's loss by its share of the global batch, so the
    sum is the gradient of the global loss, whatever the split."""
    import torch.distributed as tdist

    params = [p for p in tensors if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    i = 0
    while i < len(params):
        j, size = i, 0
        while j < len(params) and (j == i or size + params[j].numel() <= bucket):
            size += params[j].numel()
            j += 1
        flat = torch.cat([p.grad.reshape(-1) for p in params[i:j]])
        tdist.all_reduce(flat)
        offset = 0
        for p in params[i:j]:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        i = j


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over the processes (float64)."""
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def check_in_sync(model, device: torch.device | str = "cpu") -> None:
    """Raise if the processes' copies of ``model`` differ (a float64 checksum of its parameters)."""
    import torch.distributed as tdist

    total = torch.zeros(1, dtype=torch.float64, device=device)
    for p in model.parameters():
        total += p.detach().double().sum()
    sums = [torch.zeros_like(total) for _ in range(tdist.get_world_size())]
    tdist.all_gather(sums, total)
    if any(not torch.equal(s, sums[0]) for s in sums):
        raise RuntimeError(f"the processes' models diverged (parameter sums {[s.item() for s in sums]})")


def gather_rows(owned: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each process filled the rows of ``tensors`` where its bool ``owned`` is true (the rows of different
    processes are disjoint); every process gets them all, each row from its owner (on the tensors' device)."""
    import torch.distributed as tdist

    n, home = tdist.get_world_size(), owned.device
    dev = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
    owned, tensors = owned.to(dev), [t.to(dev) for t in tensors]
    owners = [torch.zeros_like(owned) for _ in range(n)]
    tdist.all_gather(owners, owned)
    if int(torch.stack(owners).sum(0).max()) > 1 or not bool(torch.stack(owners).any(0).all()):
        raise RuntimeError("the processes' rows overlap or leave rows out")
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(n)]
        tdist.all_gather(parts, t.contiguous())
        full = t.clone()
        for mask, part in zip(owners, parts):
            full[mask] = part[mask]
        out.append(full.to(home))
    return out
