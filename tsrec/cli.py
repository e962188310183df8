"""``tsrec <stage>``: one subcommand per pipeline stage (and per dvc.yaml stage of the same name)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tsrec.errors import TsrecError

# stage name -> module; each module defines add_arguments(parser) and run(args, params)
STAGES = {
    "data": "tsrec.data",
    "embed": "tsrec.embed",
    "codebook": "tsrec.codebook",
    "keywords": "tsrec.keywords",
    "backbone": "tsrec.backbone",
    "train": "tsrec.train",
    "evaluate": "tsrec.evaluate",
    "baseline": "tsrec.baselines",
    "sweep": "tsrec.sweep",
    "report": "tsrec.report",
}

log = logging.getLogger("tsrec")


def _available() -> dict[str, object]:
    mods = {}
    for name, path in STAGES.items():
        try:
            mods[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:  # a real missing dependency inside an existing module
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsrec", description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml or $TSREC_PARAMS)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tsrec.config import load_params

    try:
        params = load_params(args.params)
        args._module.run(args, params)
    except TsrecError as exc:
        log.error("%s", exc)
        print(f"tsrec {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0
