"""Paired comparisons of two methods: per-row ranks (pooled over seeds) and per-seed metrics.

Used by ``tsrec paired`` and ``tsrec report``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tsrec.core.errors import TsrecError

ROW_TEST = ("paired over rows, ranks pooled over seeds: NDCG@{k} difference with a row-bootstrap 95 % CI "
            "({n_boot} resamples); HR@{k} exact two-sided sign test on rows")
SEED_TEST = "paired t-test over seeds (one-sample t against a deterministic method's single run)"


def _aligned(frames: Sequence[pd.DataFrame], rows: pd.Index | None) -> tuple[np.ndarray, pd.Index]:
    out = []
    for f in frames:
        r = f.set_index("row")["rank"].sort_index()
        if rows is None:
            rows = r.index
        if len(r) != len(rows) or not r.index.equals(rows):
            raise TsrecError("the rank files cover different rows (same split and subsample needed)")
        out.append(r.to_numpy())
    return np.vstack(out), rows


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row NDCG@K (``tsrec.eval.metrics.ndcg_gain``, the one definition) of an array of 0-based ranks."""
    from tsrec.eval.metrics import ndcg_gain

    return np.array([ndcg_gain(int(r), k) for r in np.ravel(ranks)], dtype=float).reshape(np.shape(ranks))


def paired_pooled(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], *, k: int = 10, n_boot: int = 2000,
                  seed: int = 42) -> dict:
    """Paired comparison of methods a and b on the same rows, over one or more (a, b) rank-file pairs (one
    per seed). Per row, the NDCG@k difference is averaged over the pairs; its mean gets a bootstrap 95 % CI
    over rows (a row's seeds stay together). HR@k: rows where a hits in more pairs than b (and the reverse),
    with an exact two-sided sign test; with one pair this is McNemar's exact test on discordant rows."""
    if not pairs:
        raise TsrecError("no pairs of rank files to compare")
    ra, rows = _aligned([a for a, _ in pairs], None)
    rb, _ = _aligned([b for _, b in pairs], rows)
    d = (ndcg_at(ra, k) - ndcg_at(rb, k)).mean(axis=0)
    rng = np.random.default_rng(seed)
    boot = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    ha, hb = ((r >= 0) & (r < k) for r in (ra, rb))
    na, nb = ha.sum(axis=0), hb.sum(axis=0)
    only_a, only_b = int((na > nb).sum()), int((nb > na).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return {
        "rows": len(d), "k": k, "pairs": len(pairs),
        f"NDCG@{k}_a": float(ndcg_at(ra, k).mean()), f"NDCG@{k}_b": float(ndcg_at(rb, k).mean()),
        f"NDCG@{k}_diff": float(d.mean()),
        f"NDCG@{k}_diff_ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])],
        "bootstrap": {"resamples": n_boot, "seed": seed},
        f"HR@{k}_only_a": only_a, f"HR@{k}_only_b": only_b,
        f"HR@{k}_sign_test_p": min(1.0, 2 * tail),
    }


def paired(ranks_a: pd.DataFrame, ranks_b: pd.DataFrame, *, k: int = 10, n_boot: int = 2000,
           seed: int = 42) -> dict:
    """One evaluation of a against one of b (``paired_pooled`` with a single pair)."""
    out = paired_pooled([(ranks_a, ranks_b)], k=k, n_boot=n_boot, seed=seed)
    out.pop("pairs")
    return out


def seed_pairs(seeds_a: Sequence[int], seeds_b: Sequence[int], *, deterministic_b: bool = False
               ) -> list[tuple[int, int]]:
    """Which runs to pair: a deterministic b's one run against every seed of a; else the seeds both have;
    else, when b has one run, that run against every seed of a; else none."""
    common = sorted(set(seeds_a) & set(seeds_b))
    if common and not (deterministic_b and len(seeds_b) == 1):
        return [(s, s) for s in common]
    if len(seeds_b) == 1:
        return [(s, seeds_b[0]) for s in sorted(seeds_a)]
    return []


def seed_test(a: dict[int, float], b: dict[int, float], *, deterministic_b: bool = False) -> dict:
    """Seed-level test of a metric, a vs b (seed -> value): a paired t-test over the common seeds (n >= 2);
    against a deterministic b (one run), a one-sample t-test of a's seeds against b's value. Else n/a."""
    from scipy import stats

    common = sorted(set(a) & set(b))
    if deterministic_b and len(b) == 1 and len(a) >= 2:
        (vb,) = b.values()
        xs = [a[s] for s in sorted(a)]
        name, n, res = "one-sample t", len(xs), stats.ttest_1samp(xs, vb)
    elif len(common) >= 2:
        name, n, res = "paired t", len(common), stats.ttest_rel([a[s] for s in common], [b[s] for s in common])
    else:
        return {"test": "n/a", "n": len(a) if deterministic_b else len(common), "p": None}
    p = float(res.pvalue)
    return {"test": name, "n": n, "p": None if math.isnan(p) else p}
