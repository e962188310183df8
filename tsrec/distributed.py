"""Multi-process runs (``torchrun``, ``accelerate launch``): who this process is, its device, the process group.

The launcher sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``. On CUDA each rank is put on GPU ``LOCAL_RANK``
*before* the (nccl) process group starts; on CPU the group is gloo. Used by training (tsrec.sft) and RL (tsrec.rl).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from tsrec.errors import ParamError

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


def resolve_device(requested: str, w: World | None = None, *, file: str | None = None, field: str = "device"
                   ) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` -> a device. Under a multi-process launch ``auto`` / ``cuda`` mean
    GPU ``LOCAL_RANK`` (one GPU per process); ``cuda:N`` is taken as given."""
    w = w or world()
    req = str(requested or "auto")
    if req == "auto":
        req = "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return torch.device("cpu")
    if req != "cuda" and not (req.startswith("cuda:") and req[5:].isdigit()):
        raise ParamError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N", file=file, field=field)
    if not torch.cuda.is_available():
        raise ParamError(f"device {requested!r} but no CUDA GPU is visible", file=file, field=field)
    index = int(req[5:]) if ":" in req else (w.local_rank if w.distributed else torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise ParamError(f"device {req}: only {torch.cuda.device_count()} GPU(s) visible", file=file, field=field)
    return torch.device("cuda", index)


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
