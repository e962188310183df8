"""Compute precision and device of the LLM stages: precision ``auto | fp32 | bf16`` (params ``train.precision``,
``evaluate.precision``, ``rl.precision``; ``train.precision`` also ``bf16_pure``), scoring device
``auto | cpu | cuda[:N]`` (``evaluate.device``; training follows HF Trainer).

bf16 means autocast on the CPU (or GPU): weights, master copy and optimizer state stay fp32; matmuls run in
bf16. bf16_pure (training only) is the TS-Rec authors' setting (``from_pretrained(torch_dtype=bfloat16)`` +
``TrainingArguments(bf16=True)``): the weights are bf16, so AdamW's moments are bf16 too and there is no fp32
master copy; autocast runs on top, as HF Trainer does. ``auto`` picks bf16 only where the hardware has native
bf16 arithmetic (x86 ``avx512_bf16`` / ``amx_bf16``, or a CUDA device that supports it); elsewhere bf16 is
emulated and slower, so fp32.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import torch

from tsrec.core.pinning import cpu_flags

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
TrainPrecision = Literal["auto", "fp32", "bf16", "bf16_pure"]  # train.precision: + bf16 weights and optimizer
PURE = "bf16_pure"
Device = str  # auto | cpu | cuda | cuda:N
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(device: str = "cpu") -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def resolve(precision: TrainPrecision, device: str = "cpu") -> Literal["fp32", "bf16", "bf16_pure"]:
    """``auto`` -> ``bf16`` where native, else ``fp32``; explicit choices are kept (bf16 may be emulated)."""
    if precision == "auto":
        resolved = "bf16" if native_bf16(device) else "fp32"
        log.info("precision auto -> %s (%s native bf16 on %s)", resolved,
                 "has" if resolved == "bf16" else "no", device)
        return resolved
    if precision not in ("fp32", "bf16", PURE):
        raise ValueError(f"precision must be auto, fp32, bf16 or {PURE}, got {precision!r}")
    if precision != "fp32" and not native_bf16(device):
        log.warning("precision %s requested without native bf16 on %s: emulated, expect it to be slower",
                    precision, device)
    return precision


def weight_dtype(resolved: str) -> torch.dtype:
    """dtype of the weights a run trains (and so of AdamW's moments, made like the weights): bf16 only for
    ``bf16_pure``."""
    return torch.bfloat16 if resolved == PURE else torch.float32


def trainer_args(resolved: str, device: str = "cpu") -> dict[str, bool]:
    """The precision arguments of ``transformers.TrainingArguments``: ``bf16=True`` (autocast) for bf16 and
    for bf16_pure (over bf16 weights, as the authors' ``bf16=True`` on a bf16-loaded model); on the CPU also
    ``use_cpu=True``, without which TrainingArguments refuses bf16 where there is no bf16 GPU."""
    bf16 = resolved in ("bf16", PURE)
    return {"bf16": bf16, "fp16": False, "use_cpu": bf16 and not device.startswith("cuda")}


def autocast(resolved: str, device: str = "cpu"):
    """bf16 autocast context for ``resolved == "bf16"``, else a no-op."""
    if resolved == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_device(device: Device) -> Device:
    """``device`` if it names a device kind this project runs on, else ValueError (config validation)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def resolve_device(device: Device = "auto") -> str:
    """``auto`` -> ``cuda`` where torch sees a CUDA device, else ``cpu``; an explicit CUDA device must exist."""
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("device auto -> %s", resolved)
        return resolved
    if check_device(device) == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return device
