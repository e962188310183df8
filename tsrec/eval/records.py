"""Reading the results files back: the evaluated runs of one method (``Runs``: metrics and row ranks per
seed, from the folders of tsrec.data.layout), JSON objects with an error naming the file, and the machine
(CPU kernel set x threads) a metrics file was made with."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tsrec.core.errors import TsrecError
from tsrec.data.layout import baseline_ranks, baseline_seed_file, baseline_summary, variant_seeds
from tsrec.eval.metrics import mean_ci, read_metrics, read_with_run, run_path


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a results file; malformed JSON or another JSON type names the file (and line)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise TsrecError("expected a JSON object", file=path)
    return raw


LEGACY = "legacy_machines.json"  # under --results: the kernel sets of runs made before records carried them


def legacy_machines(results: Path) -> dict:
    """``legacy_machines.json``'s runs (empty without the file)."""
    return read_json_object(results / LEGACY).get("runs", {}) if (results / LEGACY).is_file() else {}


def machine(results: Path, rel: str, legacy: dict) -> dict | None:
    """The CPU kernel set + threads a metrics file was made with: its run record's ``machine`` block (a
    baseline's: its first seed's), else ``legacy_machines.json``'s entry (reconstructed from the ledger)."""
    rec_file = run_path(results / rel)
    try:
        rec = json.loads(rec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {}
    found = rec.get("machine") if isinstance(rec, dict) else None
    if not found and isinstance(rec, dict) and isinstance(rec.get("runs"), list) and rec["runs"]:
        found = rec["runs"][0].get("machine") if isinstance(rec["runs"][0], dict) else None
    if found:
        return {"cpu_capability": found.get("cpu_capability"), "threads": found.get("threads")}
    return legacy.get(rel)


@dataclasses.dataclass
class Runs:
    """The evaluated runs of one method on one dataset: SID-level test metrics and row-rank files per seed."""
    name: str                                  # variant or baseline model
    kind: str                                  # "variant" | "baseline"
    metrics: dict[int, dict[str, float]]       # seed -> HR@K / NDCG@K
    ranks: dict[int, Path]                     # seed -> row ranks (row, target, rank), where saved
    sources: list[Path]
    deterministic: bool = False                # one run stands for every seed (Pop, Transition)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.metrics)

    def values(self, metric: str) -> dict[int, float]:
        return {s: m[metric] for s, m in sorted(self.metrics.items()) if metric in m}

    def mean_ci(self, metric: str) -> tuple[float | None, float | None]:
        """Mean over seeds and the 95 % t half-width (None with one run)."""
        vals = list(self.values(metric).values())
        return mean_ci(vals) if vals else (None, None)


def load_variant(results: str | Path, ds: str, variant: str) -> Runs | None:
    found = variant_seeds(results, ds, variant)
    if not found:
        return None
    return Runs(variant, "variant", {s: read_metrics(d / "metrics.json") for s, d in found.items()},
                {s: d / "ranks.parquet" for s, d in found.items() if (d / "ranks.parquet").is_file()},
                [d / "metrics.json" for d in found.values()])


def load_baseline(results: str | Path, ds: str, model: str) -> Runs | None:
    """SID-level (top-level) metrics per seed from ``<model>/seed<N>.json`` when every seed the summary's run
    record lists has its file; else the summary as one run (the single-run files of the first baseline
    runs). A seed's metrics are {} where its file holds item-level metrics only."""
    path = baseline_summary(results, ds, model)
    if not path.is_file():
        return None
    summary = read_with_run(path)
    seeds = sorted(summary.get("seeds") or [])
    files = {s: baseline_seed_file(results, ds, model, s) for s in seeds}
    deterministic = bool(summary.get("deterministic", model in ("pop", "transition")))
    if files and all(f.is_file() for f in files.values()):
        return Runs(model, "baseline", {s: read_metrics(f, allow_empty=True) for s, f in files.items()},
                    {s: baseline_ranks(results, ds, model, s) for s in files
                     if baseline_ranks(results, ds, model, s).is_file()}, list(files.values()), deterministic)
    seed = seeds[0] if seeds else -1
    return Runs(model, "baseline", {seed: read_metrics(path, allow_empty=True)}, {}, [path], deterministic)
