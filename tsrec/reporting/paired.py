"""Two evaluated variants compared on the same rows (no decoding), from the per-row ranks the evaluate stage
saved beside each metrics file, pooled over the seeds both have (tsrec.eval.stats.paired_pooled); the
``tsrec paired`` command writes the result."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsrec.core.errors import TsrecError
from tsrec.data.layout import split_suffix, variant_seeds
from tsrec.eval.stats import paired_pooled, seed_pairs
from tsrec.model.scoring import check_ranks


def paired_variants(results: str | Path, ds: str, a: str, b: str, split: str, boot_seed: int,
                    only_seed: int | None = None) -> dict:
    """The saved row ranks of variant ``a`` vs ``b`` (a - b), pooled over the seeds both have (``only_seed``:
    that seed's runs only); ``boot_seed`` seeds the bootstrap."""
    suffix = split_suffix(split)
    runs = {v: variant_seeds(results, ds, v, split) for v in (a, b)}
    if only_seed is not None:
        runs = {v: {s: d for s, d in r.items() if s == only_seed} for v, r in runs.items()}
    pairs = seed_pairs(list(runs[a]), list(runs[b]))
    if not pairs:
        raise TsrecError(f"no evaluated runs to pair (seeds {a}: {sorted(runs[a])}, {b}: {sorted(runs[b])}; "
                         f"run tsrec evaluate first)", file=Path(results) / ds)
    files = []
    for sa, sb in pairs:
        pair = [runs[a][sa] / f"ranks{suffix}.parquet", runs[b][sb] / f"ranks{suffix}.parquet"]
        for f in pair:
            if not f.is_file():
                raise TsrecError("no saved ranks beside the metrics (rerun tsrec evaluate)", file=f)
            check_ranks(f, f.parent / f"metrics{suffix}.json")
        files.append(pair)
    return {"dataset": ds, "split": split, "a": a, "b": b, "seeds": [list(p) for p in pairs],
            **paired_pooled([tuple(pd.read_parquet(f) for f in pair) for pair in files], seed=boot_seed),
            "inputs": [[str(f) for f in pair] for pair in files]}


def paired_path(results: str | Path, ds: str, a: str, b: str, split: str) -> Path:
    return Path(results) / ds / "paired" / f"{a}_vs_{b}{split_suffix(split)}.json"
