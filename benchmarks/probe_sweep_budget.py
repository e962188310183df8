"""Does the sweep's short trial budget rank configurations as full runs do? (issue 18, item 2)

For each configuration with a committed full run (the ablation variants at ``--seed``; DVC outputs under
``train.out``), the probe trains the same variant on a short budget (``--short-train``: train overrides; the
600-step budget the sweep's trials had before this probe) and scores both on the sweep's objective: valid
NDCG@10 by constrained beam search on the same fixed seeded ``--eval-rows`` rows (1,000: the sweep's before this
probe). Reported: both scores per configuration, the Spearman rank correlation, and the paired row-bootstrap CI
of each short-vs-full difference (how far the short budget is from the plateau). Short runs go to
``artifacts/probes/sweep_budget/<variant>`` (retrained on a rerun); no DVC output is written.
Run: flock /tmp/tsrec-cpu.lock python benchmarks/probe_sweep_budget.py [--variants tsrec,sft,...]
Writes results/probes/sweep_budget_<DS>.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from tsrec.core.config import section
from tsrec.core.io import atomic_file
from tsrec.eval.metrics import ndcg_gain
from tsrec.data.layout import train_run_dir
from tsrec.model.runs import TrainConfig
from tsrec.model.runs import resolve_run
from tsrec.model.sft import train_run
from tsrec.commands.sweep import score_valid
from tsrec.tuning.config import SweepConfig

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("tsrec", "no_sainit", "no_tsalign", "sft")
SHORT_TRAIN = {"max_steps": 600, "eval_steps": 100, "valid_rows": 256, "keep_checkpoints": False}


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over rows and its 95 % row-bootstrap interval."""
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for scoring and the short runs (default: torch's, and train.threads in training)")
    ap.add_argument("--short-train", type=json.loads, default=SHORT_TRAIN,
                    help=f"train overrides of the short runs, JSON (default {json.dumps(SHORT_TRAIN)})")
    ap.add_argument("--eval-rows", type=int, default=1000, help="seeded valid rows scored (default 1000)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    params["_path"] = args.params
    cfg = dataclasses.replace(section(params, "sweep", SweepConfig), eval_rows=args.eval_rows)
    ds, out = cfg.dataset, REPO / "artifacts" / "probes" / "sweep_budget"
    short_train = {**args.short_train, **({"threads": args.threads} if args.threads else {})}
    rows = []
    for variant in args.variants.split(","):
        full = train_run_dir(section(params, "train", TrainConfig).out, ds, variant, args.seed)
        short = out / variant
        full_ranks, short_ranks = out / f"{variant}.full_ranks.parquet", out / f"{variant}.short_ranks.parquet"
        full_m = score_valid(params, cfg, full, ranks_file=full_ranks)
        train_run(resolve_run(params, ds, variant, seed=args.seed, out=short, overrides={"train": short_train}))
        short_m = score_valid(params, cfg, short, ranks_file=short_ranks)
        gains = [np.array([ndcg_gain(int(r), 10) for r in pd.read_parquet(f)["rank"]])
                 for f in (short_ranks, full_ranks)]
        diff = bootstrap_diff(*gains)
        rows.append({"variant": variant, "short_NDCG@10": round(short_m["NDCG@10"], 4),
                     "full_NDCG@10": round(full_m["NDCG@10"], 4), "short_minus_full": [round(x, 4) for x in diff]})
        print(rows[-1], flush=True)
    rho = pd.Series([r["short_NDCG@10"] for r in rows]).corr(pd.Series([r["full_NDCG@10"] for r in rows]),
                                                             method="spearman")
    record = {"dataset": ds, "seed": args.seed, "eval_rows": cfg.eval_rows, "short_budget": args.short_train,
              "threads": torch.get_num_threads(),
              "spearman": None if np.isnan(rho) else round(float(rho), 3), "rows": rows,
              "command": shlex.join(["python", "benchmarks/probe_sweep_budget.py",
                                     *(sys.argv[1:] if argv is None else argv)])}
    dest = REPO / "results" / "probes" / f"sweep_budget_{ds}"
    with atomic_file(dest.with_suffix(".json")) as fh:
        fh.write(json.dumps(record, indent=1))
    lines = [f"# Sweep budget fidelity, {ds} (valid NDCG@10 on {cfg.eval_rows} seeded valid rows, seed {args.seed})",
             "", f"Command: `{record['command']}`. Short budget (train overrides): `{args.short_train}`; "
             f"torch threads {record['threads']}.", "",
             f"Spearman rank correlation short vs full: {record['spearman']}", "",
             "| variant | short budget | full run | short - full [95 % row bootstrap] |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['short_NDCG@10']:.4f} | {r['full_NDCG@10']:.4f} | "
              f"{r['short_minus_full'][0]:+.4f} [{r['short_minus_full'][1]:+.4f}, {r['short_minus_full'][2]:+.4f}] |"
              for r in rows]
    with atomic_file(dest.with_suffix(".md")) as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
