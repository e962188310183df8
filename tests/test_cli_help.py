"""``tsrec <stage> --help`` is fast: it imports no stage module (those import torch, transformers, optuna), yet
prints exactly the options the imported module registers."""

import argparse
import importlib
import subprocess
import sys

import pytest

from tsrec.cli import STAGES, build_parser, help_arguments

HEAVY = ("torch", "transformers", "peft", "optuna", "sklearn", "matplotlib")


def _help(parser: argparse.ArgumentParser, stage: str) -> str:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[stage].format_help()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_equals_the_imported_modules_options(stage):
    fast = build_parser([stage, "--help"])
    full = argparse.ArgumentParser(prog="tsrec")
    importlib.import_module(STAGES[stage][0]).add_arguments(full)
    assert help_arguments(STAGES[stage][0]) is not None  # no stage falls back to importing its module
    fast_help = _help(fast, stage)
    assert fast_help.split("options:", 1)[1] == full.format_help().split("options:", 1)[1]


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom tsrec.cli import STAGES, main\n"
            "for s in STAGES:\n"
            "    try:\n        main([s, '--help'])\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
