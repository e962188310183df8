"""HR@K (= Recall@K with one relevant item) and NDCG@K from ranked lists (REFERENCE.md section 5)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tsrec.errors import TsrecError

KS = (1, 3, 5, 10, 20)
MISSING = -1  # rank of a target absent from the ranked list


def rank_of(ranked: Sequence[Hashable], target: Hashable) -> int:
    """0-based rank of the first entry equal to ``target``, or MISSING."""
    for r, cand in enumerate(ranked):
        if cand == target:
            return r
    return MISSING


def ranks(ranked_lists: Iterable[Sequence[Hashable]], targets: Iterable[Hashable]) -> list[int]:
    return [rank_of(lst, t) for lst, t in zip(ranked_lists, targets, strict=True)]


def ndcg_gain(rank: int, k: int) -> float:
    """NDCG@K of one row (one relevant item): 1/log2(r+2) for a 0-based rank r < K, else 0."""
    return 1.0 / math.log2(rank + 2) if 0 <= rank < k else 0.0


def from_ranks(row_ranks: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """Average HR@K and NDCG@K (``ndcg_gain``) over rows."""
    if not row_ranks:
        raise ValueError("no rows to score")
    out: dict[str, float] = {}
    n = len(row_ranks)
    for k in ks:
        hits = [r for r in row_ranks if 0 <= r < k]
        out[f"HR@{k}"] = len(hits) / n
        out[f"NDCG@{k}"] = sum(ndcg_gain(r, k) for r in hits) / n
    return out


def _metric_keys(block: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``prefix``HR@K / NDCG@K / Recall@K entries of a flat metrics object, prefix removed."""
    return {k[len(prefix):]: float(v) for k, v in block.items() if k.startswith(prefix)
            and k[len(prefix):].split("@")[0] in ("HR", "NDCG", "Recall")}


def _load_object(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise TsrecError("expected a JSON object of metrics", file=path)
    return raw


def read_metrics(path: Path, *, allow_empty: bool = False) -> dict[str, float]:
    """The top-level (SID-level) HR@K / NDCG@K of a metrics JSON; an error if it has none, unless
    ``allow_empty`` ({} then: e.g. a baseline file with item-level metrics only)."""
    found = _metric_keys(_load_object(path))
    if not found and not allow_empty:
        raise TsrecError("no HR@K / NDCG@K entries", file=path)
    return found


# ---------------------------------------------------------------- granularities and seeds (baselines)
# One key scheme for every metrics file: the top-level ``HR@K`` / ``NDCG@K`` are SID level (a generated SID is a
# hit for every item sharing it; the authors' protocol and the LLM variants' metrics.json); the same metrics at
# item level carry this prefix (``item/HR@10``). ``read_metrics`` reads the top level only.
ITEM_PREFIX = "item/"


def both_levels(sid_ranks: Sequence[int], item_ranks: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """SID-level metrics at the top level, item-level ones under ``ITEM_PREFIX``."""
    out = from_ranks(sid_ranks, ks)
    out.update({ITEM_PREFIX + k: v for k, v in from_ranks(item_ranks, ks).items()})
    return out


def read_item_metrics(path: Path) -> dict[str, float]:
    """The item-level HR@K / NDCG@K of a metrics JSON (keys ``item/...``, prefix removed); {} if it has none."""
    return _metric_keys(_load_object(path), ITEM_PREFIX)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its two-sided t confidence interval (Student t, n - 1 degrees of freedom).

    The half-width is None for a single value (no spread to estimate).
    """
    from scipy import stats

    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


# ---------------------------------------------------------------- metrics files: numbers only, provenance beside
def run_path(metrics_path: str | os.PathLike) -> Path:
    """The provenance file beside a metrics file: ``metrics*.json`` -> ``run*.json``, ``X.json`` -> ``X.run.json``."""
    p = Path(metrics_path)
    if p.name.startswith("metrics"):
        return p.with_name("run" + p.name[len("metrics"):])
    return p.with_name(f"{p.stem}.run{p.suffix}")


def _check_numbers(obj: Any, where: str) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_numbers(v, f"{where}.{k}" if where else str(k))
    elif obj is not None and not isinstance(obj, (int, float)):  # bool is an int
        raise ValueError(f"metrics file value {where or '<root>'} is not a number: {obj!r} (put it in the run record)")


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any], run: Mapping[str, Any]) -> Path:
    """Write a ``dvc metrics`` file holding numbers only (nested objects allowed) and, beside it
    (``run_path``), the run record: command, params, settings, hashes, environment.

    Each file is written atomically; the run record first, so a metrics file never exists without the
    record of the run that made it. ``dvc metrics show/diff`` then print only comparable numbers.
    Returns the run record's path.
    """
    from tsrec.io import write_json

    _check_numbers(metrics, "")
    rec = run_path(path)
    write_json(rec, json.loads(json.dumps(run, default=str)))
    write_json(path, dict(metrics))
    return rec


def read_with_run(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics file merged (deeply) with its run record, if any: the full record of one run."""
    path = Path(path)
    merged = json.loads(path.read_text(encoding="utf-8"))
    rec = run_path(path)
    if rec.is_file():
        from tsrec.config import deep_merge

        merged = deep_merge(merged, json.loads(rec.read_text(encoding="utf-8")))
    return merged


def is_run_record(path: str | os.PathLike) -> bool:
    """True for a run record written by ``write_metrics`` (``run*.json``, ``*.run.json``)."""
    name = Path(path).name
    return name.endswith(".run.json") or (name.startswith("run") and name.endswith(".json"))
