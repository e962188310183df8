"""Strict params at every level: typos and bad values give one ParamError / TsrecError line, not a traceback."""

from pathlib import Path

import pytest
import yaml
from tiny_train import make_params  # noqa: E402

from tsrec.cli import main
from tsrec.core.config import load_params
from tsrec.core.errors import ParamError
from tsrec.semantics.keyword_cache import cache_path
from tsrec.semantics.keyword_cache import keywords_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,line,field,hint", [
    ("seed: 1\nsede: 7\n", 2, "sede", "did you mean 'seed'"),
    ("seed: 1\ndata: {}\ntrian:\n  epochs: 2\n", 3, "trian", "did you mean 'train'"),
])
def test_unknown_top_level_key_refused(tmp_path, text, line, field, hint):
    path = _write(tmp_path, text)
    with pytest.raises(ParamError, match=hint) as exc:
        load_params(path)
    assert exc.value.file == path and exc.value.line == line and exc.value.field == field


@pytest.mark.parametrize("seed", ['"abc"', "true", "1.5"])
def test_non_integer_seed_refused(tmp_path, seed):
    with pytest.raises(ParamError, match="must be an integer") as exc:
        load_params(_write(tmp_path, f"seed: {seed}\n"))
    assert exc.value.field == "seed" and exc.value.line == 1


def test_repo_params_pass():
    assert load_params(REPO / "params.yaml")["seed"] == 42


def test_misspelt_keywords_dataset_refused():
    params = load_params(REPO / "params.yaml")
    ks = params["keywords"]["datasets"]
    ks["Industrial_and_Scientifc"] = ks.pop("Industrial_and_Scientific")
    with pytest.raises(ParamError, match="did you mean 'Industrial_and_Scientifc'") as exc:
        cache_path(keywords_config(params), "Industrial_and_Scientific")  # was: silently the ctfidf cache
    assert exc.value.field == "keywords.datasets"


def _cli(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_cli_one_line_errors(tmp_path, capsys, tiny_dataset, tiny_backbone):
    make_params(tmp_path, tiny_dataset, tiny_backbone)
    pfile = str(tmp_path / "params.yaml")
    line = _cli(capsys, "--params", pfile, "train", "--dataset", "Foo", "--variant", "tsrec")
    assert line.startswith("tsrec train: error:") and "dataset not found" in line and "Foo" in line
    line = _cli(capsys, "--params", pfile, "keywords", "--dataset", "Foo")
    assert line.startswith("tsrec keywords: error:") and "no entry for dataset 'Foo'" in line
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["seed"] = "abc"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    line = _cli(capsys, "--params", pfile, "train", "--dataset", "tiny", "--variant", "tsrec")
    assert "field 'seed'" in line and "must be an integer" in line
