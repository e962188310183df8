"""budget: the equal-budget protocol's pilot rule on valid-ranking curves (tsrec.reporting.budget): the budget B
and the selection rule that every run of a comparison then shares (docs/protocol.md).

``tsrec budget --run sft=RUN_DIR --run tsrec=RUN_DIR [--out FILE.json] [--markdown FILE.md] [--plot FILE.png]``; a RUN_DIR is a
trained run's folder (its ``plots/valid_rank_rows.csv``) or a results folder holding ``valid_rank_rows.csv``.
A command run by hand (like ``tsrec paired``), not a pipeline stage."""

from __future__ import annotations

from pathlib import Path

from tsrec.core.errors import ParamError
from tsrec.core.io import atomic_file, write_json
from tsrec.reporting.budget import budget_report, markdown, plot


def add_arguments(p) -> None:
    p.add_argument("--run", action="append", required=True, metavar="VARIANT=DIR",
                   help="a variant's run folder (or results folder) with valid_rank_rows.csv; repeat per variant")
    p.add_argument("--k", type=int, default=10, help="NDCG@K of the rule (default 10)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over rows")
    p.add_argument("--seed", type=int, default=42, help="seed of the bootstrap")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--markdown", help="write the tables as Markdown here")
    p.add_argument("--plot", help="draw the curves (PNG) here")


def run(args, params) -> None:
    runs = {}
    for spec in args.run:
        variant, sep, folder = spec.partition("=")
        if not sep or not variant or not folder:
            raise ParamError(f"--run {spec!r}: expected VARIANT=DIR", file="command line", field="--run")
        runs[variant] = Path(folder)
    report = budget_report(runs, k=args.k, n_boot=args.bootstrap, seed=args.seed)
    text = markdown(report)
    if args.out:
        write_json(args.out, report)
    if args.markdown:
        with atomic_file(args.markdown) as fh:
            fh.write(text)
    if args.plot:
        plot(report, Path(args.plot))
    print(text, end="")
