"""The pipeline's shape: dvc.yaml parses, its stages are `tsrec` subcommands, params.yaml validates."""

import subprocess
import sys
from pathlib import Path

import yaml

from tsrec.cli import NOT_STAGES, STAGES, build_parser
from tsrec.core.config import load_params

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_valid():
    res = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "data@Industrial_and_Scientific" in res.stdout


# stages that run another stage's subcommand: evaluate_rl is `tsrec evaluate` over the RL runs, a stage of its
# own so that `dvc repro evaluate` (make repro) never pulls in the rl stage
SAME_SUBCOMMAND = {"evaluate_rl": "evaluate", "train_extra": "train", "evaluate_extra": "evaluate",
                   "train_confirm": "train", "evaluate_confirm": "evaluate", "llm-sft": "llm-baseline"}


def test_each_dvc_stage_runs_its_namesake_subcommand():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        sub = SAME_SUBCOMMAND.get(name, name)
        assert cmd.split()[:2] == ["tsrec", sub], f"stage {name!r} runs {cmd!r}"
        assert sub in STAGES


def test_every_registered_subcommand_exists_and_default_params_load():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    assert set(sub.choices) == set(STAGES)
    params = load_params(REPO / "params.yaml")
    assert params["seed"] == 42


def test_every_subcommand_is_a_dvc_stage():
    # except the checking commands (`tsrec check` compares results with a committed expected file after
    # `dvc repro`; as a stage it would have no output and would have to rerun on every call)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) - NOT_STAGES <= set(stages), sorted(set(STAGES) - NOT_STAGES - set(stages))
    assert not NOT_STAGES & set(stages)


def test_cli_imports_only_the_stage_it_runs():
    """`tsrec --help` imports no stage module (nor torch); `tsrec <stage>` registers only that stage's options."""
    code = ("import sys; from tsrec.cli import NOT_STAGES, STAGES, build_parser; build_parser(['--help']); "
            "print(sorted(m for m in sys.modules if m in {p for p, _ in STAGES.values()} or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    args = build_parser(["evaluate", "--dataset", "D", "--variant", "V"]).parse_args(
        ["evaluate", "--dataset", "D", "--variant", "V"])
    assert args._module.__name__ == "tsrec.commands.evaluate" and args.dataset == "D"
    # a params file named like a stage is not taken for the stage
    args = build_parser(["--params", "data", "report"]).parse_args(["--params", "data", "report"])
    assert args._module.__name__ == "tsrec.commands.report"
