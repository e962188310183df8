"""budget: the equal-budget protocol's pilot rule on valid-ranking curves (tsrec.reporting.budget): the budget B
and the selection rule that every run of a comparison then shares (docs/protocol.md).

``tsrec budget --run sft=RUN_DIR --run tsrec=RUN_DIR [--out FILE.json] [--markdown FILE.md] [--plot FILE.png]``; a RUN_DIR is a
trained run's folder (its ``plots/valid_rank_rows.csv``) or a results folder holding ``valid_rank_rows.csv``.
``tsrec budget --arm NAME=ROOT --cost NAME=HOURS ...`` (rule 3 across arms): ROOT holds ``<variant>/seed<N>/``
per variant of ``--variants``; HOURS = one run's train + full-test evaluate on 2 threads.
A command run by hand (like ``tsrec paired``), not a pipeline stage."""

from __future__ import annotations

from pathlib import Path

from tsrec.core.errors import ParamError
from tsrec.core.io import atomic_file, write_json
from tsrec.reporting.budget import arms_markdown, budget_report, compare_arms, markdown, plot


def add_arguments(p) -> None:
    p.add_argument("--run", action="append", metavar="VARIANT=DIR",
                   help="a variant's run folder (or results folder) with valid_rank_rows.csv; repeat per variant")
    p.add_argument("--arm", action="append", metavar="NAME=ROOT",
                   help="compare arms (rule 3): an arm's results root with <variant>/seed<N>/; repeat per arm")
    p.add_argument("--cost", action="append", metavar="NAME=HOURS", help="--arm: one run's hours (train + test evaluate)")
    p.add_argument("--variants", nargs="+", default=["sft", "tsrec"], help="--arm: the variants of every arm")
    p.add_argument("--limit-h", type=float, default=2.5, help="--arm: hours a run may take (default 2.5)")
    p.add_argument("--capped", action="append", default=[], metavar="NAME",
                   help="--arm: an arm measured only as long as the limit lets it train; if no common step has "
                        "every variant within its best, its B is its last step (marked) instead of an error")
    p.add_argument("--k", type=int, default=10, help="NDCG@K of the rule (default 10)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over rows")
    p.add_argument("--seed", type=int, default=42, help="seed of the bootstrap")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--markdown", help="write the tables as Markdown here")
    p.add_argument("--plot", help="draw the curves (PNG) here")


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise ParamError(f"{flag} {spec!r}: expected NAME=VALUE", file="command line", field=flag)
        out[key] = value
    return out


def _arm_runs(root: Path, variants: list[str]) -> dict[str, Path]:
    runs = {}
    for v in variants:
        seeds = sorted((root / v).glob("seed*"))
        if len(seeds) != 1:
            raise ParamError(f"expected one seed folder under {root / v}, found {len(seeds)}", file=str(root),
                             field="--arm")
        runs[v] = seeds[0]
    return runs


def run(args, params) -> None:
    if bool(args.run) == bool(args.arm):
        raise ParamError("give either --run (one arm) or --arm (compare arms)", file="command line", field="--run")
    if args.arm:
        arms = {name: _arm_runs(Path(root), args.variants) for name, root in _pairs(args.arm, "--arm").items()}
        try:
            costs = {k: float(v) for k, v in _pairs(args.cost, "--cost").items()}
        except ValueError as exc:
            raise ParamError(f"--cost: {exc}", file="command line", field="--cost") from None
        report = compare_arms(arms, costs, limit_h=args.limit_h, k=args.k, n_boot=args.bootstrap, seed=args.seed,
                              capped=frozenset(args.capped))
        text = arms_markdown(report)
    else:
        runs = {k: Path(v) for k, v in _pairs(args.run, "--run").items()}
        report = budget_report(runs, k=args.k, n_boot=args.bootstrap, seed=args.seed)
        text = markdown(report)
    if args.out:
        write_json(args.out, report)
    if args.markdown:
        with atomic_file(args.markdown) as fh:
            fh.write(text)
    if args.plot and not args.arm:
        plot(report, Path(args.plot))
    print(text, end="")
