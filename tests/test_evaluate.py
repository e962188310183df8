import json
import math

import pandas as pd
import pytest
import yaml
from test_decoding import sid_model
from tiny_train import make_params  # noqa: E402

from tsrec.eval import metrics
from tsrec.cli import main
from tsrec.core.config import section
from tsrec.data.datasets import load_index, load_split
from tsrec.lm.decoding import SidTrie
from tsrec.core.errors import ParamError
from tsrec.data.layout import write_row_ranks
from tsrec.model.scoring import EvaluateConfig, evaluate_rows, select_rows
from tsrec.model.tasks import encode_prompt, seqrec_prompt


@pytest.fixture(scope="module")
def tiny_eval_model(tiny_backbone, tmp_path_factory):
    model, tok = sid_model(tiny_backbone, codes=8)
    out = tmp_path_factory.mktemp("sidmodel")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


def test_evaluate_rows_ranks_and_counts(tiny_dataset, tiny_eval_model):
    model, tok, _ = tiny_eval_model
    index = load_index(tiny_dataset / "sid_index.json")
    trie = SidTrie.from_index(index, tok)
    rows = load_split(tiny_dataset, "test")
    out, summary = evaluate_rows(model, tok, trie, index, rows, seqrec_prompt, encode_prompt,
                                 beams=20, batch_size=7)
    assert len(out) == len(rows) == summary["n_rows"]
    assert summary["invalid_outputs"] == 0 and summary["duplicate_outputs"] == 0
    assert summary["rows_with_fewer_than_B_sids"] == 0
    for r in out.itertuples():
        assert len(r.ranked_sids) == 20 and len(set(r.ranked_sids)) == 20
        assert r.target_sid == "".join(index[r.target])
        assert r.rank == (r.ranked_sids.index(r.target_sid) if r.target_sid in r.ranked_sids else -1)
        assert list(r.scores) == sorted(r.scores, reverse=True)
    assert summary["metrics"] == metrics.from_ranks(out["rank"].tolist())
    # 20 of the 60 SIDs are returned per row: a random model finds some targets, not all
    assert 0 < summary["metrics"]["HR@20"] < 1


def test_shared_sid_counts_as_hit(tiny_dataset, tiny_eval_model):
    """Collision policy: a SID stands for all its items; with two SIDs in the index every target is in the top 2."""
    model, tok, _ = tiny_eval_model
    index = {i: (["<a_1>", "<b_2>", "<c_3>"] if i % 2 else ["<a_4>", "<b_5>", "<c_6>"]) for i in range(60)}
    trie = SidTrie.from_index(index, tok)
    assert len(trie) == 2 and sorted(len(v) for v in trie.items) == [30, 30]
    rows = load_split(tiny_dataset, "test")
    out, summary = evaluate_rows(model, tok, trie, index, rows, seqrec_prompt, encode_prompt,
                                 beams=4, batch_size=16)
    assert summary["metrics"]["HR@3"] == 1.0 and summary["rows_with_fewer_than_B_sids"] == len(rows)
    assert set(out["rank"]) <= {0, 1}


def test_subsample_is_fixed_and_seeded():
    a = select_rows(100, 10, seed=42)
    assert list(a) == list(select_rows(100, 10, seed=42)) and len(set(a)) == 10 and list(a) == sorted(a)
    assert list(a) != list(select_rows(100, 10, seed=1))
    assert list(select_rows(5, None, 0)) == list(range(5)) == list(select_rows(5, 50, 0))


def test_config_validation():
    with pytest.raises(ParamError, match="beams"):
        section({"evaluate": {"beams": 10}}, "evaluate", EvaluateConfig)
    with pytest.raises(ParamError, match="unknown"):
        section({"evaluate": {"beam": 20}}, "evaluate", EvaluateConfig)


def test_cli_writes_metrics_and_ranks(tiny_dataset, tiny_eval_model, tmp_path):
    _, _, model_dir = tiny_eval_model
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "evaluate": {"beams": 20, "batch_size": 8}}))
    rc = main(["--params", str(params), "evaluate", "--dataset", "Industrial_and_Scientific", "--variant", "tiny",
               "--model-dir", str(model_dir), "--data-dir", str(tiny_dataset), "--subsample", "25",
               "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 0
    res = tmp_path / "results/Industrial_and_Scientific/tiny/seed42"  # the run's seed: the top-level one
    m = json.loads((res / "metrics.json").read_text())
    r = json.loads((res / "run.json").read_text())
    ranks = pd.read_parquet(tmp_path / "artifacts/Industrial_and_Scientific/eval/tiny/seed42/ranks.parquet")
    assert m["n_rows"] == len(ranks) == 25 and m["n_rows_split"] == 40
    assert m["seed"] == r["seed"] == 42
    # the git-tracked slim ranks beside the metrics: the same rows and ranks
    slim = pd.read_parquet(res / "ranks.parquet")
    assert list(slim.columns) == ["row", "target", "rank"] and slim.equals(ranks[["row", "target", "rank"]])
    from tsrec.core.io import sha256_file

    assert r["row_ranks"]["sha256"] == sha256_file(res / "ranks.parquet")
    assert r["subsample"] == {"n": 25, "seed": 42} and r["split"] == "test" and r["beams"] == 20
    assert r["model"]["source"]["kind"].startswith("plain_model_UNTRAINED")
    # the metrics file holds numbers only (dvc metrics show/diff); provenance is in the run record
    assert all(isinstance(v, (int, float)) for v in m.values()) and "command" not in m
    assert m["invalid_outputs"] == 0 and m["duplicate_outputs"] == 0
    for k, v in metrics.from_ranks(ranks["rank"].tolist()).items():
        assert m[k] == v
    assert m["rows_per_s"] > 0 and "evaluate" in r["command"]
    # valid split goes to its own files; the test ranks survive
    rc = main(["--params", str(params), "evaluate", "--dataset", "Industrial_and_Scientific", "--variant", "tiny",
               "--model-dir", str(model_dir), "--data-dir", str(tiny_dataset), "--split", "valid",
               "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 0
    mv = json.loads((res / "metrics_valid.json").read_text())
    rv = json.loads((res / "run_valid.json").read_text())
    assert rv["split"] == "valid" and rv["subsample"] is None and mv["n_rows"] == 40
    assert sorted(p.name for p in (tmp_path / "artifacts/Industrial_and_Scientific/eval/tiny/seed42").iterdir()) == [
        "ranks.parquet", "ranks_valid.parquet"]
    assert (res / "ranks_valid.parquet").is_file() and (res / "ranks.parquet").is_file()


def test_cli_errors_are_one_line(tiny_dataset, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\n")
    rc = main(["--params", str(params), "evaluate", "--dataset", "Industrial_and_Scientific", "--variant", "nope",
               "--data-dir", str(tiny_dataset), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 2
    assert "trained run folder not found" in capsys.readouterr().err


def test_cli_evaluates_a_trained_run(tmp_path, tiny_dataset, tiny_backbone):
    """Production path: tsrec.commands.train run -> load_trained (index checked) -> tasks prompt -> metrics."""
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=2)
    train_run(resolve_run(params, "tiny", "sft", seed=5))  # the default run folder: artifacts/tiny/runs/sft/seed5
    rc = main(["--params", params["_path"], "evaluate", "--dataset", "tiny", "--variant", "sft", "--seed", "5",
               "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 0
    m = json.loads((tmp_path / "results/tiny/sft/seed5/metrics.json").read_text())
    r = json.loads((tmp_path / "results/tiny/sft/seed5/run.json").read_text())
    assert r["model"]["source"]["kind"] == "trained_run" and r["model"]["meta"]["variant"] == "sft"
    assert r["model"]["source"]["path"] == str(tmp_path / "artifacts/tiny/runs/sft/seed5")
    assert m["seed"] == r["model"]["meta"]["seed"] == 5
    assert m["n_rows"] == 40 and r["subsample"] is None and m["invalid_outputs"] == 0
    assert r["index"]["sha256"] == r["model"]["meta"]["index_sha256"]
    assert (tmp_path / "artifacts/tiny/eval/sft/seed5/ranks.parquet").is_file()


def test_paired_comparison():
    from tsrec.eval.stats import paired

    rows = list(range(200))
    a = pd.DataFrame({"row": rows, "rank": [0] * 60 + [-1] * 140})
    b = pd.DataFrame({"row": rows, "rank": [0] * 20 + [5] * 10 + [-1] * 170})
    out = paired(a, b, k=10, n_boot=200)
    assert out["NDCG@10_a"] == pytest.approx(0.3)
    assert out["NDCG@10_diff"] == pytest.approx(0.3 - (20 + 10 / math.log2(7)) / 200)
    lo, hi = out["NDCG@10_diff_ci95"]
    assert 0 < lo < out["NDCG@10_diff"] < hi
    assert (out["HR@10_only_a"], out["HR@10_only_b"]) == (30, 0) and out["HR@10_sign_test_p"] < 1e-8
    same = paired(a, a, n_boot=50)
    assert same["NDCG@10_diff"] == 0 and same["HR@10_sign_test_p"] == 1.0
    with pytest.raises(Exception, match="different rows"):
        paired(a, b.iloc[:100])


def test_cli_paired(tmp_path, capsys, monkeypatch):
    runs = {("x", 1): [0, 1, -1, 3], ("y", 1): [-1, 1, -1, 12], ("x", 2): [0, 1, -1, 3], ("y", 3): [0, 0, 0, 0]}
    for (v, seed), ranks in runs.items():
        d = tmp_path / "results/DS" / v / f"seed{seed}"
        d.mkdir(parents=True)
        rec = write_row_ranks(d / "ranks.parquet", pd.DataFrame({"row": [0, 1, 2, 3], "target": 1, "rank": ranks}))
        metrics.write_metrics(d / "metrics.json", {"seed": seed, "HR@10": 0.5}, {"row_ranks": rec})
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")
    rc = main(["--params", str(params), "paired", "--dataset", "DS", "--variant", "x", "--other", "y",
               "--results", str(tmp_path / "results")])
    assert rc == 0
    out = json.loads((tmp_path / "results/DS/paired/x_vs_y.json").read_text())
    # only seed 1 is common: one pair (seeds 2 and 3 have no partner)
    assert out["a"] == "x" and out["b"] == "y" and out["rows"] == 4 and out["HR@10_only_a"] == 2
    assert out["seeds"] == [[1, 1]] and out["pairs"] == 1
    assert "--other y" in out["command"]
    # without --params it reads ./params.yaml (its seed seeds the bootstrap), like a stage
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert main(["paired", "--dataset", "DS", "--variant", "x", "--other", "y", "--results", "results"]) == 0
    # no common seed on either side and more than one run: nothing to pair
    assert main(["--params", str(params), "paired", "--dataset", "DS", "--variant", "x", "--other", "y",
                 "--seed", "2", "--results", str(tmp_path / "results")]) == 2
    assert "no evaluated runs to pair" in capsys.readouterr().err


def test_metrics_and_ranks_commit_together(tiny_dataset, tiny_eval_model, tmp_path, monkeypatch):
    _, _, model_dir = tiny_eval_model
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "evaluate": {"beams": 20, "batch_size": 8}}))
    res, art = tmp_path / "results", tmp_path / "artifacts"
    mfile, rfile = res / "DS/tiny/seed42/metrics.json", art / "DS/eval/tiny/seed42/ranks.parquet"
    slim = res / "DS/tiny/seed42/ranks.parquet"

    def evaluate(n):
        return main(["--params", str(params), "evaluate", "--dataset", "DS", "--variant", "tiny", "--model-dir",
                     str(model_dir), "--data-dir", str(tiny_dataset), "--subsample", str(n), "--results", str(res),
                     "--artifacts", str(art)])

    assert evaluate(10) == 0
    from tsrec.core.io import sha256_file

    assert json.loads((res / "DS/tiny/seed42/run.json").read_text())["ranks"]["sha256"] == sha256_file(rfile)
    old_ranks = rfile.read_bytes()

    old_metrics = mfile.read_bytes()

    def killed(*a, **kw):  # stands in for a kill while the ranks are written
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", killed)
    assert evaluate(20) == 130
    monkeypatch.undo()
    # the previous complete set stays: no metrics of 20 rows beside ranks of 10, none deleted
    assert mfile.read_bytes() == old_metrics and rfile.read_bytes() == old_ranks
    # ranks changed behind the metrics' back are refused by the paired comparison
    assert evaluate(10) == 0
    other = res / "DS/other/seed42/ranks.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(slim.read_bytes())
    (other.parent / "metrics.json").write_text(json.dumps({"seed": 42}))
    pd.read_parquet(slim).head(3).to_parquet(slim)
    assert main(["--params", str(params), "paired", "--dataset", "DS", "--variant", "tiny", "--other", "other",
                 "--results", str(res)]) == 2
