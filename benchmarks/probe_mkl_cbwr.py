"""Train-step cost of MKL's COMPATIBLE branch (repro.blas: compatible) against its default branch.

MKL reads MKL_CBWR once, so each setting runs in its own process; the driver alternates them (A B A B):

    python benchmarks/probe_mkl_cbwr.py artifacts/backbone/smollm2-135m-instruct --rounds 2

A step: the first 4 layers of the backbone, batch 16 x 64 random tokens, full-vocabulary loss, AdamW, 1 thread,
torch's AVX2 kernels (repro.cpu_capability: avx2); mean of 4 steps after one warm-up. Prints one JSON line per
process (its MKL_CBWR, s/step, the losses: they differ in the last digits between branches).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def one(backbone: str) -> dict:
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    import torch

    from tsrec.lm.llm import load_backbone

    torch.set_num_threads(1)
    model, _ = load_backbone(backbone, 4)
    model.train()
    ids = torch.randint(100, 40000, (16, 64), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return out.loss.item()

    step()
    t = time.perf_counter()
    losses = [step() for _ in range(4)]
    return {"MKL_CBWR": os.environ.get("MKL_CBWR", "unset"), "s_per_step": round((time.perf_counter() - t) / 4, 3),
            "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbone")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.backbone)))
        return
    for _ in range(args.rounds):
        for branch in (None, "COMPATIBLE"):
            env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
            if branch:
                env["MKL_CBWR"] = branch
            out = subprocess.run([sys.executable, __file__, args.backbone, "--one"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
