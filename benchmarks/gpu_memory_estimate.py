"""Dry-run memory estimate of the `paper` full fine-tune (Qwen2.5-1.5B, AdamW) per GPU: DDP vs ZeRO-1/2/3 (FSDP).

No GPU and no weights: the parameter count comes from the architecture built on the meta device
(benchmarks/bench_gpu_paper_step.py's Qwen2.5-1.5B config); the activation share from the measured H100 step
(results/benchmarks/gpu_paper_step.json: peak at micro batch 16 x 112 tokens, bf16 autocast, minus the static
weights + gradients + AdamW state). Static bytes per parameter: train.precision bf16 (autocast over fp32
master weights) weights 4, gradients 4, AdamW moments 8; bf16_pure (the paper profile: bf16 weights and AdamW
state, no fp32 copy) half of each. The activations are the measured bf16-autocast ones for both.

    python benchmarks/gpu_memory_estimate.py [--out results/benchmarks/gpu_memory_estimate.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
SCHEMES = {  # bytes per parameter on each of n GPUs (bf16 autocast, fp32 master): (replicated, sharded over n)
    "ddp": (16, 0),                       # everything replicated
    "zero1": (8, 8),                      # optimizer state sharded (DeepSpeed ZeRO-1)
    "zero2 / fsdp shard_grad_op": (4, 12),  # + gradients sharded
    "zero3 / fsdp full_shard": (0, 16),   # + weights sharded (one layer gathered at a time: small extra)
}


def param_count() -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_gpu_paper_step import QWEN25_15B

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B))
    return sum(p.numel() for p in model.parameters())


def estimate(n_params: int, gpus=(1, 2, 4, 8, 16)) -> dict:
    bench = json.loads((REPO / "results/benchmarks/gpu_paper_step.json").read_text())
    bf16 = next(b["extra_info"] for b in bench["benchmarks"] if b["extra_info"]["precision"] == "bf16")
    static = 16 * n_params / GIB
    activations = bf16["peak_mem_gib"] - static  # micro batch 16 x 112 tokens; scales with micro batch x length
    table = {precision: {name: {n: round(scale * (rep + shard / n) * n_params / GIB + activations, 1) for n in gpus}
                         for name, (rep, shard) in SCHEMES.items()}
             for precision, scale in (("bf16", 1.0), ("bf16_pure", 0.5))}
    return {"params": n_params, "static_gib_ddp": round(static, 1),
            "activations_gib_micro16": round(activations, 1),
            "measured_peak_gib": bf16["peak_mem_gib"], "measured_on": bf16["gpu"],
            "per_gpu_gib": table,
            "note": "per-GPU peak = replicated + sharded/n bytes per parameter + the measured activations at micro "
                    "batch 16 x 112 tokens (halve them with train.batch_size 8); CUDA context and allocator "
                    "slack (~1-2 GiB) not included"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = estimate(param_count())
    head = "| precision | scheme | " + " | ".join(f"{n} GPU" for n in report["per_gpu_gib"]["bf16"]["ddp"]) + " |"
    print(f"Qwen2.5-1.5B: {report['params']:,} parameters; static (DDP) {report['static_gib_ddp']} GiB, "
          f"activations {report['activations_gib_micro16']} GiB (from the measured {report['measured_peak_gib']} "
          f"GiB peak on {report['measured_on']})\n")
    print(head + "\n|---|---|" + "---:|" * (head.count("|") - 3))
    for precision, rows in report["per_gpu_gib"].items():
        for name, row in rows.items():
            print(f"| {precision} | {name} | " + " | ".join(f"{v} GiB" for v in row.values()) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
