"""paired: compare two evaluated variants on the same rows (no decoding), from the per-row ranks the evaluate
stage saved beside each metrics file, pooled over the seeds both have (tsrec.eval.stats.paired_pooled).

``tsrec paired --dataset DS --variant A --other B`` -> ``results/<DS>/paired/A_vs_B[_valid].json``.
A command run by hand after ``dvc repro`` (like ``tsrec check``), not a pipeline stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tsrec.core.config import global_seed
from tsrec.core.errors import TsrecError
from tsrec.core.io import write_json
from tsrec.data.layout import split_suffix, variant_seeds
from tsrec.model.scoring import check_ranks, command_line


def run_paired(args, params, split: str, seed: int) -> None:
    """The saved row ranks of --variant vs --other, pooled over the seeds both have."""
    from tsrec.eval.stats import paired_pooled, seed_pairs

    ds, suffix = args.dataset, split_suffix(split)
    runs = {v: variant_seeds(args.results, ds, v, split) for v in (args.variant, args.other)}
    if args.seed is not None:
        runs = {v: {s: d for s, d in r.items() if s == args.seed} for v, r in runs.items()}
    pairs = seed_pairs(list(runs[args.variant]), list(runs[args.other]))
    if not pairs:
        raise TsrecError(f"no evaluated runs to pair (seeds {args.variant}: {sorted(runs[args.variant])}, "
                         f"{args.other}: {sorted(runs[args.other])}; run tsrec evaluate first)",
                         file=Path(args.results) / ds)
    files = []
    for sa, sb in pairs:
        pair = [runs[args.variant][sa] / f"ranks{suffix}.parquet", runs[args.other][sb] / f"ranks{suffix}.parquet"]
        for f in pair:
            if not f.is_file():
                raise TsrecError("no saved ranks beside the metrics (rerun tsrec evaluate)", file=f)
            check_ranks(f, f.parent / f"metrics{suffix}.json")
        files.append(pair)
    out = {"dataset": ds, "split": split, "a": args.variant, "b": args.other, "seeds": [list(p) for p in pairs],
           **paired_pooled([tuple(pd.read_parquet(f) for f in pair) for pair in files], seed=seed),
           "inputs": [[str(f) for f in pair] for pair in files], "command": command_line(args, params, "paired")}
    dest = Path(args.results) / ds / "paired" / f"{args.variant}_vs_{args.other}{suffix}.json"
    write_json(dest, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("inputs", "command")}))


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True, help="A (e.g. tsrec)")
    p.add_argument("--other", required=True, help="B (e.g. sft): the report is A - B")
    p.add_argument("--split", choices=["valid", "test"], help="default: evaluate.split")
    p.add_argument("--seed", type=int, help="compare only this seed's runs (default: every seed both have)")
    p.add_argument("--results", default="results", help="results root (metrics JSON and row ranks)")


def run(args, params) -> None:
    split = args.split or (params.get("evaluate") or {}).get("split", "test")
    run_paired(args, params, split, global_seed(params))  # the bootstrap's seed
