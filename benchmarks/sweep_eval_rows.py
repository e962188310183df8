"""How many valid rows the sweep's objective needs: the 95% CI of valid NDCG@10 (one trial) and of the paired
difference between two trials scored on the same rows, as a function of the subsample size, from the committed
valid ranks of the profile comparison (results/profiles/<profile>/..., 500 seeded rows each).

    python benchmarks/sweep_eval_rows.py  ->  results/sweep_design/eval_rows.{json,md}
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from tsrec.core.io import atomic_file, write_json
from tsrec.eval.stats import ndcg_at

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted((ROOT / "results/profiles").glob("*/Industrial_and_Scientific/*/seed*/ranks_valid.parquet"))
SIZES = (250, 500, 1000, 2000, 4000)


def main() -> None:
    gains = {p.parts[-5]: ndcg_at(pd.read_parquet(p).sort_values("row")["rank"].to_numpy(), 10) for p in RUNS}
    out = {"source": [str(p.relative_to(ROOT)) for p in RUNS], "metric": "NDCG@10", "sizes": list(SIZES),
           "single": {}, "paired": {}}
    for name, g in gains.items():
        sd = float(g.std(ddof=1))
        out["single"][name] = {"rows": len(g), "mean": round(float(g.mean()), 4), "sd": round(sd, 4),
                               "ci95_half_width": {n: round(1.96 * sd / np.sqrt(n), 4) for n in SIZES}}
    for a, b in itertools.combinations(gains, 2):
        d = gains[a] - gains[b]
        sd = float(d.std(ddof=1))
        out["paired"][f"{a} - {b}"] = {"mean": round(float(d.mean()), 4), "sd": round(sd, 4),
                                       "ci95_half_width": {n: round(1.96 * sd / np.sqrt(n), 4) for n in SIZES}}
    dest = ROOT / "results/sweep_design"
    write_json(dest / "eval_rows.json", out)
    lines = ["# Valid rows for the sweep objective (NDCG@10)", "",
             "95% CI half-width (normal approximation, per-row sd from the committed 500-row valid ranks) by "
             "subsample size. Trials are scored on the same seeded rows, so the paired half-width is the one that "
             "decides whether two trials differ. `python benchmarks/sweep_eval_rows.py`.", "",
             "| | sd | " + " | ".join(f"n={n}" for n in SIZES) + " |", "|---|---:|" + "---:|" * len(SIZES)]
    for kind in ("single", "paired"):
        for name, r in out[kind].items():
            lines.append(f"| {kind}: {name} | {r['sd']} | " + " | ".join(f"±{r['ci95_half_width'][n]}" for n in SIZES)
                         + " |")
    with atomic_file(dest / "eval_rows.md") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
