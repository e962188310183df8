"""report: the main table per dataset (Markdown + CSV) and its plots, from the files under results/; also
results/baselines.md and, with ``--readme``, the README's result block. What is written: tsrec.reporting.document."""

from __future__ import annotations

import logging
from pathlib import Path

from tsrec.core.config import global_seed, section
from tsrec.reporting.document import Matrix, ReportConfig, write_report

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) to tabulate (default: data.datasets)")
    p.add_argument("--readme", help="also write the result block between the markers of this README")


def run(args, params) -> None:
    cfg = section(params, "report", ReportConfig)
    datasets = args.dataset or (params.get("data") or {}).get("datasets") or []
    variants = list((params.get("variants") or {}).keys())
    train = params.get("train") or {}  # the train matrix as dvc.yaml and config.check_top_level read it
    matrix = Matrix(list(train.get("variants") or []), list(train.get("seeds") or []),
                    list(train.get("datasets") or []))
    parts, baselines_md, readme = write_report(cfg, datasets, variants, global_seed(params), matrix,
                                               Path(args.readme) if args.readme else None)
    log.info("wrote %s and %s", cfg.out, baselines_md)
    if readme:
        log.info("wrote the result block of %s", args.readme)
    print("\n".join(parts))
