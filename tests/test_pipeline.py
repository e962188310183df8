"""The pipeline's shape: dvc.yaml parses, its stages are `tsrec` subcommands, params.yaml validates."""

import subprocess
import sys
from pathlib import Path

import yaml

from tsrec.cli import STAGES, build_parser
from tsrec.config import load_params

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_valid():
    res = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "data@Industrial_and_Scientific" in res.stdout


def test_each_dvc_stage_runs_its_namesake_subcommand():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.split()[:2] == ["tsrec", name], f"stage {name!r} runs {cmd!r}"
        assert name in STAGES


def test_every_registered_subcommand_exists_and_default_params_load():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    assert set(sub.choices) == set(STAGES)
    params = load_params(REPO / "params.yaml")
    assert params["seed"] == 42


def test_every_subcommand_is_a_dvc_stage():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) <= set(stages), sorted(set(STAGES) - set(stages))
