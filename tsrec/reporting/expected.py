"""The regression check (``tsrec check``): compare a run's metrics files with a committed expected file.

``tsrec check --results results --expected results/smoke/expected.json`` reads every metric the expected
file lists (HR@K / NDCG@K and row counts, per metrics file under ``--results``), prints a
``dvc metrics diff``-style table (path | metric | expected | got | change | status) and exits 2 when a
metric or file is missing, when a quality metric (HR/NDCG) is lower than expected by more than the
tolerance, or when a count differs. A quality metric HIGHER than expected past the tolerance also fails
(the run did not reproduce the expected numbers) unless ``--allow-better``.

``--write-expected`` writes the expected file from the metrics under ``--results`` instead (run it right
after the ``dvc repro`` that produced them; the file records the command and tolerance).

Expected file: ``{"tolerance": abs, "command": ..., "metrics": {"<path under results>": {"HR@10": x, ...}}}``.
Metrics files are flat numbers (``tsrec.eval.metrics.write_metrics``): SID-level ``HR@K`` / ``NDCG@K`` at the top
level, item-level ones as ``item/HR@K`` (baselines); run records (``run*.json``, ``*.run.json``) are skipped.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from tsrec.core.errors import TsrecError
from tsrec.core.pinning import describe
from tsrec.eval.metrics import bad_value, is_run_record, verify_record
from tsrec.eval.records import legacy_machines, machine, read_json_object

log = logging.getLogger(__name__)

QUALITY = re.compile(r"^(item/)?(HR|NDCG|Recall)@\d+$")  # higher is better (SID level; item level)
COUNTS = ("n_rows", "invalid_outputs", "duplicate_outputs")  # must match exactly
DEFAULT_TOLERANCE = 1e-9  # same seed, precision and threads -> the same numbers (only float printing left)


def metrics_files(results: Path) -> list[Path]:
    """The recommendation metrics files under ``results``: ``<DS>/<variant>/seed<N>/metrics.json`` (and
    ``<DS>/<variant>/metrics.json`` of the layout before seed folders), ``<DS>/baselines/*.json``."""
    files = [*results.glob("*/*/seed*/metrics.json"), *results.glob("*/*/metrics.json"),
             *results.glob("*/baselines/*.json")]
    return sorted(f for f in files if not is_run_record(f))


def read_values(path: Path) -> dict[str, float]:
    """The comparable numbers of one metrics file (quality metrics and counts, top level)."""
    raw = read_json_object(path)
    return {k: v for k, v in raw.items()
            if (QUALITY.match(k) or k in COUNTS) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def machine_notes(expected: dict[str, Any], results: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One line per metrics file that differs from the expected file, saying which kernel sets / threads the two
    runs used, and whether a mismatch is therefore expected (tsrec.core.pinning)."""
    legacy = legacy_machines(results)
    notes = []
    for rel in sorted({r["path"] for r in rows if r["status"] not in ("ok", "better")}):
        want = (expected.get("machines") or {}).get(rel)
        got = machine(results, rel, legacy)
        same = bool(want and got and want.get("cpu_capability") == got.get("cpu_capability")
                    and want.get("threads") == got.get("threads"))
        verdict = ("same kernels and threads: a real difference" if same else
                   "unknown kernels on one side: cannot tell" if not (want and got) else
                   "different kernels or threads: a mismatch is expected (set repro.cpu_capability / threads)")
        notes.append(f"{rel}: expected made with {describe(want)}, this run {describe(got)} -> {verdict}")
    return notes


def collect(results: Path) -> dict[str, dict[str, float]]:
    return {f.relative_to(results).as_posix(): read_values(f) for f in metrics_files(results)}


def unverified(path: Path) -> str | None:
    """Why a metrics file cannot be trusted (no run record, or not the record's metrics), else None."""
    try:
        verify_record(path)
    except TsrecError as exc:
        return str(exc)
    return None


def compare(expected: dict[str, dict[str, float]], results: Path, tolerance: float,
            allow_better: bool = False) -> list[dict[str, Any]]:
    """One row per expected metric: expected, got, change, status (ok | REGRESSION | CHANGED | MISSING |
    INVALID: NaN, Inf or out of range, whatever the flags | UNVERIFIED: not the metrics its run record names)."""
    rows = []
    for rel, want in sorted(expected.items()):
        path = results / rel
        got_all = read_values(path) if path.is_file() else None
        why_not = unverified(path) if got_all is not None else None
        if why_not:
            log.error("%s", why_not)
        for key, exp in sorted(want.items(), key=lambda kv: _order(kv[0])):
            got = None if got_all is None else got_all.get(key)
            row = {"path": rel, "metric": key, "expected": exp, "got": got, "change": None}
            if got is None:
                row["status"] = "MISSING" + (" FILE" if got_all is None else "")
            elif bad_value(key, got):
                row["status"] = "INVALID"
            elif why_not:
                row["status"] = "UNVERIFIED"
            else:
                change = got - exp
                row["change"] = change
                if abs(change) <= tolerance:
                    row["status"] = "ok"
                elif QUALITY.match(key):
                    row["status"] = "REGRESSION" if change < 0 else ("better" if allow_better else "CHANGED (higher)")
                else:
                    row["status"] = "CHANGED"
            rows.append(row)
    return rows


def _order(key: str) -> tuple:
    m = re.match(r"^(item/)?([A-Za-z]+)@(\d+)$", key)
    return (0, bool(m.group(1)), int(m.group(3)), m.group(2)) if m else (1, False, 0, key)


def failed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] not in ("ok", "better")]


def render(rows: list[dict[str, Any]], show_all: bool = False) -> str:
    """``dvc metrics diff``-style table of the rows that differ (all rows with ``show_all``)."""
    def fmt(v: Any, signed: bool = False) -> str:
        if v is None:
            return "-"
        if isinstance(v, int) and not signed:
            return str(v)
        return f"{v:+.6g}" if signed else f"{v:.6g}"

    shown = rows if show_all else [r for r in rows if r["status"] != "ok"]
    table = [("Path", "Metric", "Expected", "Got", "Change", "Status")]
    table += [(r["path"], r["metric"], fmt(r["expected"]), fmt(r["got"]), fmt(r["change"], True), r["status"])
              for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def load_expected(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TsrecError("expected metrics file not found", file=path)
    raw = read_json_object(path)
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise TsrecError("no 'metrics' object of <path> -> {metric: value}", file=path, field="metrics")
    for rel, want in metrics.items():
        if not isinstance(want, dict) or not all(isinstance(v, (int, float)) for v in want.values()):
            raise TsrecError("expected an object of metric -> number", file=path, field=f"metrics.{rel}")
        why = next(filter(None, (bad_value(k, v) for k, v in want.items())), None)
        if why:
            raise TsrecError(f"invalid expected value: {why}", file=path, field=f"metrics.{rel}")
    tol = raw.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tol, (int, float)) or tol < 0 or not math.isfinite(tol):
        raise TsrecError(f"tolerance must be a number >= 0, got {tol!r}", file=path, field="tolerance")
    return raw


def uncovered(expected: dict[str, dict[str, float]], results: Path) -> list[str]:
    """``<file>:<metric>`` under ``results`` that the expected file does not list (never checked)."""
    return [f"{rel}:{k}" for rel, got in collect(results).items() for k in got if k not in expected.get(rel, {})]


def expected_record(results: Path, expected_path: Path, tolerance: float, note: str, command: str) -> dict[str, Any]:
    """The expected file's content from the metrics under ``results`` (``--write-expected``); refuses an invalid
    or unverified metrics file, or none at all."""
    found = {rel: v for rel, v in collect(results).items() if v}
    for rel, values in found.items():
        why = next(filter(None, (bad_value(k, v) for k, v in values.items())), None) or unverified(results / rel)
        if why:
            raise TsrecError(f"refusing to write it from an invalid metrics file: {why}", file=expected_path)
    if not found:
        raise TsrecError("no metrics files with HR/NDCG found under the results folder", file=results)
    legacy = legacy_machines(results)
    machines = {rel: m for rel in found if (m := machine(results, rel, legacy))}
    return {"tolerance": tolerance, "note": note, "command": command, "metrics": found, "machines": machines}
