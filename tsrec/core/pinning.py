"""Exact reproduction across x86 machines: the CPU kernel set and thread count every command runs with.

torch picks its vectorised CPU kernels at run time from what the CPU offers (``DEFAULT``, ``AVX2``,
``AVX512``), and AVX2 and AVX-512 kernels round differently (softmax, norms, reductions), so the same run on
an AVX-512 machine drifts from one made on an AVX2-only machine after a few steps. The thread count changes
the order of reductions too. params ``repro.cpu_capability`` (default ``avx2``: every x86-64 machine of the
last decade has it) and ``repro.threads`` pin both; ``native`` / ``0`` opt out.

The capability can only be set before torch is imported (``ATEN_CPU_CAPABILITY``): the CLI calls ``apply``
first thing; library users (and the test suite's conftest) set the variable themselves, and ``record``
refuses to describe a run whose torch disagrees with the params. Every train / evaluate / rl / baseline
record carries ``record()``'s block; ``tsrec check`` shows it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from tsrec.core.errors import ParamError, TsrecError

log = logging.getLogger(__name__)

Capability = Literal["avx2", "avx512", "default", "native"]
Blas = Literal["auto", "compatible"]
ENV = "ATEN_CPU_CAPABILITY"
# /proc/cpuinfo flags torch checks before it dispatches to each kernel set (aten/src/ATen/native/DispatchStub.cpp)
NEEDS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"), "default": ()}


@dataclasses.dataclass
class ReproConfig:
    runs: list[str] = dataclasses.field(
        default_factory=lambda: ["Industrial_and_Scientific-tsrec-42", "Industrial_and_Scientific-sft-42"])
    cpu_capability: Capability = "avx2"  # torch CPU kernel set; native = whatever this CPU offers (not portable)
    threads: int = 1                     # torch threads of every stage without its own setting (0 = leave as is)
    # MKL's code branch for BLAS (torch's fp32 matmuls): auto = chosen per CPU model (fast; its blocking differs
    # between CPU models, so bits do too); compatible = MKL_CBWR=COMPATIBLE, the one branch MKL documents as
    # reproducible on Intel and non-Intel CPUs alike (~4x slower train steps here)
    blas: Blas = "auto"

    def validate(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def supported(capability: str, flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU can run torch's ``capability`` kernels (``native`` always can)."""
    flags = cpu_flags() if flags is None else flags
    return capability == "native" or all(f in flags for f in NEEDS[capability])


def config(params: dict) -> ReproConfig:
    from tsrec.core.config import section

    return section(params, "repro", ReproConfig)


def apply(cfg: ReproConfig, file: str | None = None) -> None:
    """Set the kernel set (before torch loads) and the default thread count; refuse what this CPU cannot do."""
    cap = cfg.cpu_capability
    if cap != "native":
        if not supported(cap):
            raise ParamError(f"this CPU cannot run torch's {cap} kernels (needs {', '.join(NEEDS[cap])}); "
                             "runs made here cannot match the committed ones bit for bit: set "
                             "repro.cpu_capability: native to run anyway", file=file, field="repro.cpu_capability")
        have = os.environ.get(ENV)
        if have and have.lower() != cap:
            raise ParamError(f"${ENV}={have} contradicts repro.cpu_capability: {cap} (unset one of them)",
                             file=file, field="repro.cpu_capability")
        if "torch" in sys.modules and not have:
            log.warning("torch is already imported: repro.cpu_capability %s cannot take effect here", cap)
        os.environ[ENV] = cap  # torch accepts lower case only (an unknown value is ignored with a warning)
    if cfg.blas == "compatible":
        have = os.environ.get("MKL_CBWR")
        if have and have.upper() != "COMPATIBLE":
            raise ParamError(f"$MKL_CBWR={have} contradicts repro.blas: compatible (unset one of them)",
                             file=file, field="repro.blas")
        os.environ["MKL_CBWR"] = "COMPATIBLE"  # read when MKL initialises (the first matmul)
    if cfg.threads:
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)  # read when torch loads
        if "torch" in sys.modules:
            import torch

            torch.set_num_threads(cfg.threads)


def record(cfg: ReproConfig | None = None, *, file: str | None = None) -> dict[str, Any]:
    """What this process computes with, for run records: the requested and the actual kernel set, threads, the
    CPU's vector flags; refuses (TsrecError) when torch runs other kernels than ``cfg`` asks for."""
    import torch

    actual = torch.backends.cpu.get_cpu_capability()
    out = {"cpu_capability": actual, "requested": cfg.cpu_capability if cfg else None,
           "blas": os.environ.get("MKL_CBWR", "auto").lower(),
           "threads": torch.get_num_threads(),
           "cpu_vector_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))),
           "env": {k: os.environ[k] for k in (ENV, "OMP_NUM_THREADS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
                   if k in os.environ}}
    if cfg and cfg.blas == "compatible" and out["blas"] != "compatible":
        raise TsrecError("repro.blas is compatible but MKL_CBWR is not COMPATIBLE in this process: set it before "
                         "the first matmul (the tsrec CLI does)", file=file, field="repro.blas")
    if cfg and cfg.cpu_capability != "native" and actual.lower() != cfg.cpu_capability:
        raise TsrecError(f"torch runs {actual} CPU kernels but repro.cpu_capability is {cfg.cpu_capability}: set "
                         f"{ENV}={cfg.cpu_capability} before torch is imported (the tsrec CLI does)",
                         file=file, field="repro.cpu_capability")
    return out


def stage_threads(own: int | None, repro: ReproConfig) -> int:
    """A stage's torch threads: its own setting where > 0, else ``repro.threads`` (0: leave as is)."""
    return own if own else repro.threads


def describe(rec: dict | None) -> str:
    """``AVX2 x 2 threads`` from a record (``?`` where the run predates the record)."""
    if not rec or not rec.get("cpu_capability"):
        return f"? (not recorded) x {rec.get('threads') or '?'} threads" if rec else "? (not recorded)"
    return f"{rec['cpu_capability']} x {rec.get('threads') or '?'} threads"
