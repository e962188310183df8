"""HR@K (= Recall@K with one relevant item) and NDCG@K from ranked lists (REFERENCE.md section 5)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tsrec.core.errors import TsrecError

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


# ---------------------------------------------------------------- what a metric may be
RATE = ("HR", "NDCG", "Recall")  # fractions of rows: in [0, 1]
COUNT_KEYS = ("n_rows", "n_rows_split", "invalid_outputs", "duplicate_outputs", "rows_with_fewer_than_B_sids",
              "target_not_in_top_B", "n_runs")  # counts: >= 0


RATE_KEY = re.compile(r"^(valid_)?(item/)?(HR|NDCG|Recall)@\d+$")


def is_rate(key: str) -> bool:
    """``HR@K`` / ``NDCG@K`` / ``Recall@K``, also item level or on valid (``item/HR@10``, ``valid_NDCG@10``)."""
    return bool(RATE_KEY.match(str(key)))


def bad_value(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be metric ``key`` (NaN / Inf anywhere, a rate outside [0, 1], a negative count),
    else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"{key} is {value} (not a finite number)"
    if is_rate(key) and not 0 <= value <= 1:  # top-level keys only (a nested ci95.HR@10 is a half-width)
        return f"{key} = {value} is outside [0, 1]"
    if key in COUNT_KEYS and value < 0:
        return f"{key} = {value} is a negative count"
    return None


def _metric_keys(block: Mapping[str, Any], prefix: str = "", path: Path | None = None) -> dict[str, float]:
    """``prefix``HR@K / NDCG@K / Recall@K entries of a flat metrics object, prefix removed; a NaN / Inf /
    out-of-range value is an error naming ``path``."""
    out = {k[len(prefix):]: v for k, v in block.items() if k.startswith(prefix)
           and k[len(prefix):].split("@")[0] in RATE}
    for k, v in out.items():
        why = bad_value(prefix + k, v) if isinstance(v, (int, float)) else f"{prefix + k} is not a number: {v!r}"
        if why:
            raise TsrecError(f"invalid metric: {why} (rerun the stage that wrote it)", file=path, line=prefix + k)
    return {k: float(v) for k, v in out.items()}


METRICS_OBJECT = "a JSON object of metrics"


def read_json_object(path: Path, what: str = "a JSON object") -> dict:
    """A JSON object from a results file; malformed JSON or another JSON type names the file (and line)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise TsrecError(f"expected {what}", file=path)
    return raw


def read_metrics(path: Path, *, allow_empty: bool = False) -> dict[str, float]:
    """The top-level (SID-level) HR@K / NDCG@K of a metrics JSON; an error if it has none, unless
    ``allow_empty`` ({} then: e.g. a baseline file with item-level metrics only)."""
    found = _metric_keys(read_json_object(path, METRICS_OBJECT), path=path)
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
    return _metric_keys(read_json_object(path, METRICS_OBJECT), ITEM_PREFIX, path)


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
    elif obj is not None and (why := bad_value(where, obj)):
        raise ValueError(f"metrics file value {why}")


def _metrics_bytes(metrics: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(metrics), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any], run: Mapping[str, Any]) -> Path:
    """Write a ``dvc metrics`` file holding numbers only (nested objects allowed; finite, rates in [0, 1],
    counts >= 0) and, beside it (``run_path``), the run record: command, params, settings, hashes, environment.

    One unit (``tsrec.core.io.commit_group``): the record holds the metrics file's sha256 (``metrics_sha256``) and
    is renamed into place last, so readers (``verify_record``) refuse a metrics file without its record or
    with another run's. ``dvc metrics show/diff`` then print only comparable numbers.
    Returns the run record's path.
    """
    from tsrec.core.io import atomic_file, commit_group, write_json

    _check_numbers(metrics, "")
    path, rec = Path(path), run_path(path)
    blob = _metrics_bytes(metrics)
    with commit_group():
        with atomic_file(path, "wb") as fh:
            fh.write(blob)
        write_json(rec, {**json.loads(json.dumps(run, default=str)), "metrics_sha256": hashlib.sha256(blob).hexdigest()})
    return rec


def verify_record(metrics_file: str | os.PathLike) -> dict:
    """The run record of a metrics file, checked: it exists and (records since the check) names this metrics
    file's sha256. Else an error naming the file: the commit of that run is incomplete or mixed."""
    metrics_file = Path(metrics_file)
    rec = run_path(metrics_file)
    if not rec.is_file():
        raise TsrecError(f"no run record {rec.name} beside it: an incomplete commit (rerun the stage that wrote it)",
                         file=metrics_file)
    record = read_json_object(rec, METRICS_OBJECT)
    want = record.get("metrics_sha256")
    if want and hashlib.sha256(metrics_file.read_bytes()).hexdigest() != want:
        raise TsrecError(f"does not match its run record {rec.name} (another run's, or a mixed commit: rerun the "
                         "stage that wrote it)", file=metrics_file, field="metrics_sha256")
    return record


def read_with_run(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics file merged (deeply) with its run record, if any: the full record of one run."""
    path = Path(path)
    merged = json.loads(path.read_text(encoding="utf-8"))
    rec = run_path(path)
    if rec.is_file():
        from tsrec.core.config import deep_merge

        record = json.loads(rec.read_text(encoding="utf-8"))
        record.pop("metrics_sha256", None)  # commit bookkeeping (verify_record), not part of the run
        merged = deep_merge(merged, record)
    return merged


def is_run_record(path: str | os.PathLike) -> bool:
    """True for a run record written by ``write_metrics`` (``run*.json``, ``*.run.json``)."""
    name = Path(path).name
    return name.endswith(".run.json") or (name.startswith("run") and name.endswith(".json"))
