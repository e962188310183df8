"""check: compare a run's metrics files with a committed expected file; fail on any regression.

``tsrec check --results results --expected results/smoke/expected.json``; ``--write-expected`` writes the
expected file instead. What is compared and how: tsrec.reporting.expected."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from tsrec.core.errors import TsrecError
from tsrec.core.io import write_json
from tsrec.reporting.expected import (DEFAULT_TOLERANCE, compare, expected_record, failed, load_expected,
                                      machine_notes, render, uncovered)

log = logging.getLogger(__name__)


def tolerance(text: str) -> float:
    """--tolerance: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_arguments(p) -> None:
    p.add_argument("--results", default="results", help="results root the metrics files are under (default: results)")
    p.add_argument("--expected", required=True, help="committed expected metrics JSON")
    p.add_argument("--tolerance", type=tolerance, help="absolute tolerance (default: the expected file's)")
    p.add_argument("--allow-better", action="store_true", help="HR/NDCG above expected past the tolerance pass")
    p.add_argument("--all", action="store_true", help="show every compared metric, not only those that differ")
    p.add_argument("--write-expected", action="store_true",
                   help="write --expected from the metrics under --results (after the run that made them)")
    p.add_argument("--note", default="", help="with --write-expected: how the results were produced")


def run(args, params) -> None:
    results, expected_path = Path(args.results), Path(args.expected)
    if args.write_expected:
        tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
        record = expected_record(results, expected_path, tol, args.note, "tsrec " + " ".join(sys.argv[1:]))
        write_json(expected_path, record)
        n = sum(len(v) for v in record["metrics"].values())
        print(f"wrote {expected_path}: {n} metrics from {len(record['metrics'])} files, tolerance {tol:g}")
        return
    exp = load_expected(expected_path)
    tol = exp.get("tolerance", DEFAULT_TOLERANCE) if args.tolerance is None else args.tolerance
    rows = compare(exp["metrics"], results, tol, args.allow_better)
    bad = failed(rows)
    extra = uncovered(exp["metrics"], results)
    if extra:
        log.warning("%d metrics under %s are not in %s and were not checked, e.g. %s (regenerate it with "
                    "--write-expected)", len(extra), results, expected_path, extra[:3])
    if bad or args.all or any(r["status"] != "ok" for r in rows):
        print(render(rows, show_all=args.all))
    files = len(exp["metrics"])
    for note in machine_notes(exp, results, rows):
        print(note)
    if bad:
        kinds = sorted({r["status"] for r in bad})
        raise TsrecError(f"{len(bad)} of {len(rows)} metrics in {files} files do not match {expected_path} "
                         f"(tolerance {tol:g}): {', '.join(kinds)}")
    print(f"check ok: {len(rows)} metrics in {files} files match {expected_path} (tolerance {tol:g})")
