import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tsrec.baselines.config import LEARNED, MODELS, BaselinesConfig, model_config
from tsrec.baselines.protocol import build, summarise
from tsrec.baselines.general import Transition
from tsrec.baselines.sequential import NETS, Caser, CaserConfig, GRU4RecConfig, HSTUConfig, SASRecConfig
from tsrec.baselines.table import below_floor, our_rows, render, sanity
from tsrec.baselines.trainer import Granularity, Recommender, SeqData, evaluate, train_pairs
from tsrec.core.config import section
from tsrec.data.datasets import rows_frame
from tsrec.core.errors import ParamError
from tsrec.core.io import write_json
from tsrec.eval.metrics import mean_ci, read_item_metrics, read_metrics, read_with_run, run_path, write_metrics

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 32, "max_epochs": 2, "min_epochs": 1, "patience": 1}
ONE_CONFIG = {"lr": [0.001], "dropout": [0.1], "width": [16]}


def tiny_params(data_root, **extra) -> dict:
    base = {
        "seed": 0,
        "data": {"out": str(data_root)},
        "baselines": {
            "data": str(data_root), "work": str(Path(data_root) / "work"), "max_len": 10, "topk": 20, "threads": 1, "train": FAST, "seeds": [0],
            "sasrec": {"hidden": 16, "layers": 1, "heads": 2}, "gru4rec": {"hidden": 16},
            "caser": {"hidden": 16, "n_v": 2, "n_h": 4}, "hstu": {"hidden": 16, "layers": 1, "heads": 2},
            "tiger": {"d_model": 16, "d_ff": 32, "layers": 1, "heads": 2, "beams": 20, "valid_beams": 20,
                      "eval_batch": 16, "valid_rows": 8, "train": {"max_epochs": 1}},
            "tuning": ONE_CONFIG,
        },
    }
    base["baselines"].update(extra)
    return base


def cfg_of(params) -> BaselinesConfig:
    return section(params, "baselines", BaselinesConfig)


def numbers_only(obj) -> bool:
    """A dvc metrics file's contents: numbers (or null), nested objects of them; no string, list or bool."""
    if isinstance(obj, dict):
        return all(numbers_only(v) for v in obj.values())
    return obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool))


def test_train_pairs_expand_and_dedupe():
    train = rows_frame([
        {"user_id": "u", "history": [1], "target": 2},
        {"user_id": "u", "history": [1, 2], "target": 3},  # its prefix pair (1 -> 2) is already a row
        {"user_id": "v", "history": [7, 8], "target": 9},  # (7 -> 8) exists only inside this row
    ])
    assert sorted(map(lambda p: (tuple(p[0]), p[1]), train_pairs(train, 10))) == [
        ((1,), 2), ((1, 2), 3), ((7,), 8), ((7, 8), 9)]
    assert ((2,), 3) in [(tuple(c), t) for c, t in train_pairs(train, 1)]  # max_len truncates the context


def _write_rows(root: Path, train_rows: list[dict]) -> Path:
    """A 5-item dataset with hand-written train rows (valid/test copy one row)."""
    ds = root / "hand"
    ds.mkdir(parents=True)
    pd.DataFrame({"item_id": range(5), "title": "t", "description": "", "brand": "", "categories": ""}
                 ).to_parquet(ds / "items.parquet", index=False)
    write_json(ds / "sid_index.json", {str(i): [f"<a_{i}>", f"<b_{i % 2}>", "<c_0>"] for i in range(5)})
    rows_frame(train_rows).to_parquet(ds / "train.parquet", index=False)
    for split in ("valid", "test"):
        rows_frame([{"user_id": "z", "history": [0, 1], "target": 3}]).to_parquet(ds / f"{split}.parquet", index=False)
    return ds


def test_pop_ranking_by_hand(tmp_path):
    # sequences: u = 3 4 4, v = 4 1 -> counts 4: 3, 1: 1, 3: 1 (tie -> smaller id first), 0: 0, 2: 0
    ds = _write_rows(tmp_path, [
        {"user_id": "u", "history": [3], "target": 4},
        {"user_id": "u", "history": [3, 4], "target": 4},
        {"user_id": "v", "history": [4], "target": 1},
    ])
    data = SeqData(ds)
    pop = build("pop", data, cfg_of(tiny_params(tmp_path)), {}, 0)
    assert pop.fit() is None
    assert pop.recommend([[0], [2, 3]], 5) == [[4, 1, 3, 0, 2]] * 2
    assert pop.recommend([[0]], 2) == [[4, 1]]


@pytest.mark.parametrize("model", ["sasrec", "hstu", "gru4rec", "caser"])
def test_id_models_train_and_rank_all_items(tiny_dataset, model):
    params = tiny_params(tiny_dataset.parent)
    data = SeqData(tiny_dataset)
    rec = build(model, data, cfg_of(params), {}, 0)
    before = [p.detach().clone() for p in rec.net.parameters()]
    fitted = rec.fit()
    assert fitted.epochs == 2 and 0 <= fitted.best_valid <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, rec.net.parameters()))  # it did train
    hist, _ = data.rows("test")
    scores = rec.scores(hist)
    assert scores.shape == (len(hist), data.n_items) and torch.isfinite(scores).all()
    top = rec.recommend(hist, 20)
    assert len(top) == len(hist)
    assert all(len(r) == 20 == len(set(r)) and set(r) <= set(data.item_ids) for r in top)


@pytest.mark.parametrize("model", ["sasrec", "hstu", "gru4rec"])
def test_causal_models_ignore_positions_after_the_history(tiny_dataset, model):
    data = SeqData(tiny_dataset)
    rec = build(model, data, cfg_of(tiny_params(tiny_dataset.parent)), {}, 0)
    rec.net.eval()
    seq, lengths = data.encode([[1, 2, 3], [4, 5]])
    junk = seq.clone()
    junk[0, 3:] = 7
    junk[1, 2:] = 9
    with torch.no_grad():
        assert torch.allclose(rec.net.scores(seq, lengths), rec.net.scores(junk, lengths), atol=1e-5)


def test_caser_linear_filters_equal_conv2d():
    torch.manual_seed(0)
    net = Caser(20, 5, CaserConfig(hidden=8, n_v=2, n_h=3))
    e = torch.randn(4, 5, 8)
    h = 3
    conv = torch.nn.Conv2d(1, 3, (h, 8))
    with torch.no_grad():
        conv.weight.copy_(net.conv_h[h - 1].weight.view(3, h, 8).unsqueeze(1))
        conv.bias.copy_(net.conv_h[h - 1].bias)
    ref = conv(e.unsqueeze(1)).squeeze(3)  # [B, n_h, L-h+1]
    ours = net.conv_h[h - 1](e.unfold(1, h, 1).transpose(2, 3).flatten(2))  # [B, L-h+1, n_h]
    assert torch.allclose(ref.transpose(1, 2), ours, atol=1e-5)


def test_tiger_decode_returns_distinct_valid_sids(tiny_dataset):
    params = tiny_params(tiny_dataset.parent)
    data = SeqData(tiny_dataset)
    index = data.index
    rec = build("tiger", data, cfg_of(params), {}, 0)
    fitted = rec.fit()
    assert fitted.epochs == 1
    valid_sids = {tuple(s) for s in index.values()}
    hist, targets = data.rows("test")
    lists = rec.decode(hist[:8], beams=20)
    assert len(lists) == 8
    for ranked in lists:
        assert 0 < len(ranked) <= 20 and len(set(ranked)) == len(ranked)
        assert set(ranked) <= valid_sids
    first = rec.vocab.item_sid[targets[0]]
    assert first[2] in rec.trie.allowed(first[:2]) and rec.trie.allowed(first[:1] + (10**6,)) == []
    assert rec.trie.allowed(first) == [1]  # EOS after a full SID
    with pytest.raises(ValueError, match="beams"):
        rec.recommend(hist[:1], 21)


@pytest.mark.parametrize("bad, match", [
    ({"models": ["pop", "bpr"]}, "unknown model"),
    ({"tuning": {**ONE_CONFIG, "per_model": {"sasrec": {"lr": [0.01, 0.02]}}}}, "same number"),
    ({"tuning": {**ONE_CONFIG, "per_model": {"sasrec": {"hiddden": [8]}}}}, "hiddden"),
    ({"tuning": {**ONE_CONFIG, "per_model": {"pop": {"lr": [0.01]}}}}, "learned"),
    ({"tuning": {**ONE_CONFIG, "lr": []}}, "lr"),
    ({"sasrec": {"hidden": 10, "heads": 4}, "tuning": {**ONE_CONFIG, "width": [10]}}, "divisible"),
    ({"tiger": {"beams": 10}}, "beams"),
    ({"train": {"lr": -1.0}}, "lr"),
    ({"gru4rec": {"heads": 2}}, "heads"),  # a key the model does not have
    ({"train": {**FAST, "max_minutes": 2.5}}, "max_minutes"),  # wall-clock budgets are gone
    ({"tiger": {"train": {"max_minutes": 2.5}}}, "max_minutes"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": []}, "seeds"),
])
def test_bad_params_refused(tmp_path, bad, match):
    with pytest.raises(ParamError, match=match):
        cfg_of(tiny_params(tmp_path, **bad))


def test_cli_pop_run_and_table(tiny_dataset, tmp_path, monkeypatch):
    from tsrec.cli import main

    params = tiny_params(tiny_dataset.parent, seeds=[3, 4])
    params["data"] = {"datasets": ["tiny"], "out": str(tiny_dataset.parent)}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "results"
    assert main(["--params", str(pfile), "baseline", "--model", "pop", "--dataset", "tiny", "--out", str(out)]) == 0
    summary_file = out / "tiny" / "baselines" / "pop.json"
    summary = read_with_run(summary_file)
    files = sorted((out / "tiny" / "baselines" / "pop").glob("*.json"))
    assert [f.name for f in files] == ["seed3.json", "seed3.run.json"]  # deterministic: one run for every seed
    rec = read_with_run(files[0])
    assert rec["command"] == summary["command"] == "tsrec baseline --model pop --dataset tiny"
    keys = {f"{n}@{k}" for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
    assert keys | {f"item/{k}" for k in keys} <= set(rec) and keys <= set(summary)
    assert read_metrics(summary_file) == {k: summary[k] for k in keys}
    # the dvc metrics files hold numbers only; the command, config and settings are in the run records
    for metrics_file in (summary_file, files[0]):
        numbers, record = (json.loads(f.read_text()) for f in (metrics_file, run_path(metrics_file)))
        assert numbers_only(numbers) and {"HR@10", "NDCG@10", "item/NDCG@10"} <= set(numbers)
        assert record["command"] == "tsrec baseline --model pop --dataset tiny" and "HR@10" not in record
        assert not set(numbers) & set(record)
    assert json.loads(summary_file.read_text())["n_runs"] == 1
    assert json.loads(run_path(summary_file).read_text())["seeds"] == [3]
    assert json.loads(files[0].read_text())["seed"] == 3 and json.loads(files[1].read_text())["config"] == {}
    assert summary["n_runs"] == 1 and summary["ci95"]["NDCG@10"] is None
    assert rec["rows"]["test"] == 40 and rec["ranking"] == "full ranking over all items"
    # the row ranks beside the seed file give back its SID-level metrics (paired tests in tsrec report)
    ranks = pd.read_parquet(out / "tiny" / "baselines" / "pop" / "seed3.ranks.parquet")
    assert list(ranks["row"]) == list(range(40)) and list(ranks["target"]) == list(pd.read_parquet(
        tiny_dataset / "test.parquet")["target"])
    from tsrec.eval.metrics import from_ranks

    assert from_ranks(ranks["rank"].tolist()) == {k: rec[k] for k in keys}
    assert main(["--params", str(pfile), "baseline", "--table", "--dataset", "tiny", "--out", str(out)]) == 0
    md = (out / "baselines.md").read_text()
    assert "| Pop" in md and "not run" in md and "published" in md.lower()
    assert "SID level" in md and "Item level" in md
    # a bad dataset name is a one-line error, exit 2
    assert main(["--params", str(pfile), "baseline", "--model", "pop", "--dataset", "nope", "--out", str(out)]) == 2


def test_cli_learned_model_one_file_per_seed_with_t_interval(tiny_dataset, tmp_path):
    from tsrec.cli import main

    params = tiny_params(tiny_dataset.parent, seeds=[5, 6, 7],
                         tuning={"lr": [0.001, 0.01], "dropout": [0.1], "width": [16]})
    params["data"] = {"datasets": ["tiny"], "out": str(tiny_dataset.parent)}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "results"
    (out / "tiny" / "baselines" / "gru4rec").mkdir(parents=True)
    (out / "tiny" / "baselines" / "gru4rec" / "seed99.json").write_text("{}")  # stale: removed
    (out / "tiny" / "baselines" / "gru4rec" / "seed99.ranks.parquet").write_text("")  # stale: removed
    assert main(["--params", str(pfile), "baseline", "--model", "gru4rec", "--dataset", "tiny", "--out", str(out)]) == 0
    folder = out / "tiny" / "baselines" / "gru4rec"
    assert sorted(f.name for f in folder.glob("*.json")) == [f"seed{s}{x}.json" for s in (5, 6, 7)
                                                            for x in ("", ".run")]
    assert sorted(f.name for f in folder.glob("*.parquet")) == [f"seed{s}.ranks.parquet" for s in (5, 6, 7)]
    recs = [read_with_run(folder / f"seed{s}.json") for s in (5, 6, 7)]
    for s, r in zip((5, 6, 7), recs):
        assert r["stopped"] in ("patience", "max_epochs") and r["curve"] and r["epochs"] == len(r["curve"])
        assert "valid_NDCG@10" in r["curve"][0] and "valid_item/NDCG@10" in r["curve"][0]
        assert len(r["tuning"]["configs"]) == 2 and r["tuning"]["seed"] == 5  # every config tried, recorded
        assert r["config"] == r["tuning"]["configs"][r["tuning"]["chosen"]]["config"]
        numbers = json.loads((folder / f"seed{s}.json").read_text())  # the metrics file alone: numbers
        assert numbers_only(numbers) and numbers["seed"] == s and numbers["epochs"] == r["epochs"]
        assert {"NDCG@10", "item/NDCG@10", "valid", "rows", "train_time_s"} <= set(numbers)
        assert not {"curve", "tuning", "config", "stopped", "command", "params", "git_commit"} & set(numbers)
    summary = read_with_run(out / "tiny" / "baselines" / "gru4rec.json")
    numbers = json.loads((out / "tiny" / "baselines" / "gru4rec.json").read_text())
    assert numbers_only(numbers) and set(numbers["ci95"]) >= {"NDCG@10", "item/NDCG@10", "valid_NDCG@10"}
    assert {"NDCG@10", "valid_NDCG@10", "n_runs", "tuning_wall_s"} <= set(numbers)
    record = json.loads((out / "tiny" / "baselines" / "gru4rec.run.json").read_text())
    assert record["seeds"] == [5, 6, 7] and record["stopped"] == [r["stopped"] for r in recs]
    assert record["runs"] == [str(folder / f"seed{s}.json") for s in (5, 6, 7)] and "config" in record
    vals = [r["NDCG@10"] for r in recs]
    mean = sum(vals) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert math.isclose(summary["NDCG@10"], mean)
    assert math.isclose(summary["ci95"]["NDCG@10"], 4.302652729911275 * sd / math.sqrt(3))  # t(0.975, 2 dof)
    assert summary["seeds"] == [5, 6, 7] and summary["n_runs"] == 3


def test_killed_stage_resumes_from_its_finished_fits(tiny_dataset, tmp_path, monkeypatch):
    """A stage killed during its third fit reruns only that fit, and writes what an uninterrupted run writes."""
    from tsrec.baselines.sequential import IDRecommender
    from tsrec.cli import main

    def stage(name: str) -> tuple[list[str], Path, Path]:
        params = tiny_params(tiny_dataset.parent, seeds=[5, 6], work=str(tmp_path / name / "work"),
                             tuning={"lr": [0.001, 0.01], "dropout": [0.1], "width": [16]})
        params["data"] = {"datasets": ["tiny"], "out": str(tiny_dataset.parent)}
        pfile = tmp_path / f"{name}.yaml"
        pfile.write_text(yaml.safe_dump(params))
        out = tmp_path / name / "results"
        return (["--params", str(pfile), "baseline", "--model", "gru4rec", "--dataset", "tiny", "--out", str(out)],
                out / "tiny" / "baselines", tmp_path / name / "work" / "tiny" / "baselines" / "gru4rec" / "fits")

    fits_run, real_fit = [], IDRecommender.fit

    def counted_fit(self):
        fits_run.append((self.seed, self.train_cfg.lr))
        if kill_at and len(fits_run) == kill_at:
            raise KeyboardInterrupt("killed")
        return real_fit(self)

    monkeypatch.setattr(IDRecommender, "fit", counted_fit)
    kill_at = 0
    args, ref_out, ref_fits = stage("ref")
    assert main(args) == 0 and len(fits_run) == 3  # 2 tuning configs (seed 5) + the chosen one with seed 6
    assert not ref_fits.exists()  # removed once the results are written

    fits_run.clear()
    kill_at = 3
    args, out, fits = stage("killed")
    assert main(args) == 130  # SIGINT's exit code, no traceback (tsrec.cli)
    assert len(list(fits.glob("*.pt"))) == 2 and not (out / "gru4rec.json").exists()
    fits_run.clear()
    kill_at = 0
    assert main(args) == 0
    assert [s for s, _ in fits_run] == [6]  # only the fit cut by the kill runs again
    assert not fits.exists()
    for seed in (5, 6):
        got, want = (read_with_run(o / "gru4rec" / f"seed{seed}.json") for o in (out, ref_out))
        for key in ("NDCG@10", "HR@10", "item/NDCG@10", "valid", "epochs", "best_epoch", "curve", "config"):
            assert got[key] == want[key], key
        timeless = [[{k: v for k, v in c.items() if k not in ("wall_s", "train_time_s")} for c in r["tuning"]["configs"]]
                    for r in (got, want)]
        assert timeless[0] == timeless[1]
        assert pd.read_parquet(out / "gru4rec" / f"seed{seed}.ranks.parquet").equals(
            pd.read_parquet(ref_out / "gru4rec" / f"seed{seed}.ranks.parquet"))


def test_fit_store_reuses_a_fit_only_for_the_same_settings_inputs_and_code(tiny_dataset, tmp_path):
    from tsrec.baselines.fits import FitStore
    from tsrec.baselines.protocol import train_one

    cfg = cfg_of(tiny_params(tiny_dataset.parent))
    data = SeqData(tiny_dataset, 10)
    store = FitStore(tmp_path / "fits", data, "gru4rec", cfg, None)
    knobs = {"lr": 0.001, "dropout": 0.1, "width": 16}
    rec, entry = train_one("gru4rec", data, cfg, knobs, 0, 20, store)
    again, loaded = train_one("gru4rec", data, cfg, knobs, 0, 20, store)
    assert loaded == entry and all(torch.equal(a, b) for a, b in zip(
        rec.module.state_dict().values(), again.module.state_dict().values()))
    pop = build("pop", data, cfg, {}, 0)
    store.save(pop, {}, 0, {"config": {}})  # count models have no weights: nothing to save or resume
    assert len(list((tmp_path / "fits").glob("*.pt"))) == 1
    fresh = build("gru4rec", data, cfg, knobs, 0)
    assert store.load(fresh, knobs, 1) is None  # another seed
    assert store.load(fresh, {**knobs, "lr": 0.01}, 0) is None  # another config
    other_cfg = cfg_of(tiny_params(tiny_dataset.parent, max_len=5))
    assert FitStore(tmp_path / "fits", data, "gru4rec", other_cfg, None).load(fresh, knobs, 0) is None
    store = FitStore(tmp_path / "fits", data, "gru4rec", cfg, None)  # the settings back: fit saved again
    train_one("gru4rec", data, cfg, knobs, 0, 20, store)
    assert store.load(fresh, knobs, 0) is not None
    train = pd.read_parquet(tiny_dataset / "train.parquet")
    train.head(len(train) - 1).to_parquet(tiny_dataset / "train.parquet", index=False)  # the data changed
    assert FitStore(tmp_path / "fits", SeqData(tiny_dataset, 10), "gru4rec", cfg, None).load(fresh, knobs, 0) is None


def test_restricted_check_run_is_recorded_and_flagged(tiny_dataset, tmp_path):
    from tsrec.cli import main

    params = tiny_params(tiny_dataset.parent, seeds=[1, 2],
                         tuning={"lr": [0.001, 0.01], "dropout": [0.1], "width": [16]})
    params["data"] = {"datasets": ["tiny"], "out": str(tiny_dataset.parent)}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "results"
    args = ["--params", str(pfile), "baseline", "--dataset", "tiny", "--out", str(out), "--seed", "2", "--config", "1"]
    assert main([*args, "--model", "caser", "--model", "pop"]) == 0  # pop ignores --config (one config)
    rec = read_with_run(out / "tiny" / "baselines" / "caser" / "seed2.json")
    assert rec["command"].endswith("--seed 2 --config 1") and rec["config"] == {"lr": 0.01, "dropout": 0.1, "width": 16}
    assert [c["index"] for c in rec["tuning"]["configs"]] == [1] and rec["tuning"]["restricted_to"] == [1]
    assert not (out / "tiny" / "baselines" / "caser" / "seed1.json").exists()
    assert main(["--params", str(pfile), "baseline", "--table", "--dataset", "tiny", "--out", str(out)]) == 0
    assert "Partial runs (--max-rows / --config, checks only, not results): Caser." in (out / "baselines.md").read_text()
    assert main([*args[:-1], "7", "--model", "caser"]) == 2  # outside the grid: one-line error


def test_table_sanity_flags_a_model_below_pop(tmp_path):
    for model, ndcg in (("pop", 0.05), ("sasrec", 0.08), ("caser", 0.04), ("transition", 0.06)):
        metrics = {f"{n}@{k}": ndcg for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
        write_metrics(tmp_path / "d" / "baselines" / f"{model}.json",
                      {**metrics, "valid_NDCG@10": ndcg, "ci95": {"NDCG@10": 0.001}, "n_runs": 3}, {"seeds": []})

    sft = {f"{n}@{k}": 0.1 for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
    write_json(tmp_path / "d" / "sft" / "seed42" / "metrics.json", sft)
    df = our_rows(tmp_path, "d")
    assert sanity(df) == ["Caser"]
    assert below_floor(df) == ["Caser"]
    status = dict(zip(df["model"], df["status"]))
    assert status["LC-Rec (= our sft variant)"] == status["MiniOneRec-SFT (= our sft variant)"] == "ok"
    assert status["TIGER"] == status["BIGRec"] == status["HSTU"] == status["D3"] == "not run"
    md = render(tmp_path, ["d"])
    assert "FAILS for Caser" in md and "BELOW it: Caser" in md
    assert "0.0800 ± 0.0010" in md  # mean +- 95 % half-width
    assert "no item-level metrics" in md  # the sft file carries SID-level metrics only
    # a single-run file of the first baseline runs: metrics at the model's native unit (item level here)
    item = {f"item/{n}@{k}": 0.07 for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
    write_metrics(tmp_path / "d" / "baselines" / "gru4rec.json", item, {"seeds": [42], "native_unit": "item"})
    df = our_rows(tmp_path, "d")
    gru = df.set_index("model").loc["GRU4Rec"]
    assert gru["status"] == "ok" and pd.isna(gru["NDCG@10"]) and gru["item/NDCG@10"] == 0.07
    assert gru["unit"] == "item"
    assert sanity(df) == ["Caser"] and sanity(df, "item/") is None  # Pop has no item-level metrics here
    assert re.search(r"\| GRU4Rec +\| no SID-level metrics +\| item ", render(tmp_path, ["d"]))


def _readme_list(title: str) -> set[tuple[str, str]]:
    """The (model, dataset) pairs the baselines page (docs/baselines.md) names after ``title``."""
    text = " ".join((REPO / "docs" / "baselines.md").read_text().split())
    m = re.search(re.escape(title) + r" \(test NDCG@10, SID level\): (.*?)(?: \(|\.)", text)
    assert m, f"docs/baselines.md: no line {title!r}"
    return set(re.findall(r"`(\w+)` on (\w+)", m.group(1)))


def test_committed_results_below_the_floors_are_named_in_the_docs():
    """On the committed real results (per-seed format): every learned baseline below the transition floor or
    below Pop on test NDCG@10 (SID level) is named as such in docs/baselines.md, and only those; each summary is the
    mean of its seed files."""
    below = {"transition": set(), "pop": set()}
    found = 0
    for ds_dir in sorted((REPO / "results").glob("*/baselines")):
        floors = {}
        for floor in below:
            f = ds_dir / f"{floor}.json"
            if f.is_file() and "n_runs" in json.loads(f.read_text()):
                floors[floor] = read_metrics(f)["NDCG@10"]
        for path in ds_dir.glob("*.json"):
            if path.name.endswith(".run.json"):
                continue
            rec = read_with_run(path)
            if rec.get("model") in ("pop", "transition") or rec.get("max_rows") or "n_runs" not in rec:
                continue
            found += 1
            for floor, value in floors.items():
                if rec["NDCG@10"] <= value:
                    below[floor].add((rec["model"], ds_dir.parent.name))
            seeds = [json.loads((ds_dir / rec["model"] / f"seed{s}.json").read_text()) for s in rec["seeds"]]
            assert math.isclose(rec["NDCG@10"], sum(r["NDCG@10"] for r in seeds) / len(seeds))
    if not found:
        pytest.skip("no committed baseline results in the per-seed format yet")
    assert _readme_list("Below the transition floor") == below["transition"]
    assert _readme_list("Below Pop") == below["pop"]


# ---------------------------------------------------------------- transition floor
def test_transition_counts_ties_and_backoff(tmp_path):
    # pairs (last -> next): 0->1 twice, 0->2 once, 0->3 once, 1->4 once; popularity: 1:2, 4:2, 2:1, 3:1, 0:...
    ds = _write_rows(tmp_path, [
        {"user_id": "u", "history": [0], "target": 1},
        {"user_id": "v", "history": [0], "target": 1},
        {"user_id": "w", "history": [0], "target": 3},
        {"user_id": "x", "history": [0], "target": 2},
        {"user_id": "y", "history": [1], "target": 4},
        {"user_id": "z", "history": [2], "target": 4},
    ])
    data = SeqData(ds)
    pop_order = build("pop", data, cfg_of(tiny_params(tmp_path)), {}, 0)
    pop_order.fit()
    rec = build("transition", data, cfg_of(tiny_params(tmp_path)), {}, 0)
    assert isinstance(rec, Transition) and rec.fit() is None
    # 0 -> 1 (count 2), then 2 and 3 tie on count 1 and on popularity 1: smaller id first; then Pop back-off
    pop = pop_order.order
    assert rec.recommend([[4, 0]], 5) == [[1, 2, 3] + [i for i in pop if i not in (1, 2, 3)][:2]]
    assert rec.recommend([[0]], 2) == [[1, 2]]
    # item 3 never precedes anything in train: pure popularity back-off (same list as Pop)
    assert rec.recommend([[3]], 5) == [pop[:5]]
    assert rec.recommend([[1]], 3) == [[4] + [i for i in pop if i != 4][:2]]


# ---------------------------------------------------------------- both granularities
def test_granularity_maps_by_hand():
    # items 0,1,2 share SID A; item 3 alone on B; popularity: 2 > 0 = 1 (tie -> smaller id)
    index = {0: ["A"], 1: ["A"], 2: ["A"], 3: ["B"]}
    from collections import Counter

    g = Granularity([0, 1, 2, 3], index, Counter({2: 5, 0: 1, 1: 1, 3: 9}))
    assert g.sid_items[("A",)] == [2, 0, 1] and g.slack == 2
    assert g.to_sids([1, 0, 3, 2], 2) == [("A",), ("B",)]
    assert g.to_items([("B",), ("A",)], 3) == [3, 2, 0]
    assert g.to_items([("A",), ("B",)], 10) == [2, 0, 1, 3]


class _Fixed(Recommender):
    def __init__(self, data, lists, unit):
        super().__init__(data, 0)
        self.lists, self.unit = lists, unit

    def recommend(self, histories, k):
        return [lst[:k] for lst in self.lists[:len(histories)]]


def test_evaluate_scores_both_levels(tmp_path):
    ds = _write_rows(tmp_path, [{"user_id": "u", "history": [3], "target": 4}])
    # items 0 and 2 share a SID (sid_index of _write_rows: a_i, b_{i%2}, c_0 -> make a collision)
    write_json(ds / "sid_index.json", {"0": ["<a_0>", "<b_0>", "<c_0>"], "1": ["<a_1>", "<b_1>", "<c_0>"],
                                       "2": ["<a_0>", "<b_0>", "<c_0>"], "3": ["<a_3>", "<b_1>", "<c_0>"],
                                       "4": ["<a_4>", "<b_0>", "<c_0>"]})
    data = SeqData(ds)
    # item ranker: target 2 at item rank 2 ([0, 1, 2]); at SID level item 0 already hits (shares 2's SID), rank 0
    m, r = evaluate(_Fixed(data, [[0, 1, 2, 3, 4]], "item"), [[3]], [2], k=3)
    assert r == {"sid": [0], "item": [2]}
    assert m["HR@1"] == 1.0 and m["item/HR@1"] == 0.0 and math.isclose(m["item/NDCG@3"], 0.5)
    # SID ranker: (a_1..) then the shared SID: expands to items by popularity (4 pops more than 0 and 2; 0/2 tie)
    sid02, sid1 = ("<a_0>", "<b_0>", "<c_0>"), ("<a_1>", "<b_1>", "<c_0>")
    m, r = evaluate(_Fixed(data, [[sid1, sid02]], "sid"), [[3]], [2], k=3)
    assert r == {"sid": [1], "item": [2]}  # items [1, 0, 2]: 0 before 2 (same popularity, smaller id)


def test_mean_ci_student_t():
    mean, half = mean_ci([0.1, 0.2, 0.3])
    assert math.isclose(mean, 0.2) and math.isclose(half, 4.302652729911275 * 0.1 / math.sqrt(3))
    assert mean_ci([0.5]) == (0.5, None)
    recs = [{"model": "m", "dataset": "d", "seed": s, "NDCG@10": v, "valid": {"NDCG@10": v, "item/NDCG@10": v},
             "granularity": {}, "native_unit": "item", "config": {}, "tuning": {"restricted_to": None, "configs": []},
             "epochs": 1, "stopped": "patience", "train_time_s": 1.0, "max_rows": None, "git_commit": None}
            for s, v in ((1, 0.1), (2, 0.3))]
    summary = summarise(recs, "cmd")
    assert math.isclose(summary["NDCG@10"], 0.2) and summary["ci95"]["NDCG@10"] > 0.1


# ---------------------------------------------------------------- tuning grid
def test_tuning_grid_same_size_for_every_learned_model(tmp_path):
    cfg = cfg_of(tiny_params(tmp_path, tuning={"lr": [0.001, 0.003], "dropout": [0.1, 0.3], "width": [16, 32],
                                               "per_model": {"tiger": {"lr": [0.002, 0.004]}}}))
    grids = {m: cfg.tuning.grid(m) for m in MODELS}
    assert grids["pop"] == grids["transition"] == [{}]
    assert {len(grids[m]) for m in LEARNED} == {8}
    assert grids["sasrec"][0] == {"lr": 0.001, "dropout": 0.1, "width": 16}
    assert {c["lr"] for c in grids["tiger"]} == {0.002, 0.004}
    sas, train = model_config(cfg, "sasrec", {"lr": 0.003, "dropout": 0.3, "width": 32}, "x")
    assert (sas.hidden, sas.dropout, train.lr) == (32, 0.3, 0.003)
    tig, _ = model_config(cfg, "tiger", {"lr": 0.004, "dropout": 0.3, "width": 32}, "x")
    assert (tig.d_model, tig.d_ff) == (32, 32 * tig.ff_ratio)


# ---------------------------------------------------------------- initialisation
def _std(t):
    return t.detach().float().std().item()


def test_sasrec_init_as_recbole():
    torch.manual_seed(0)
    net = NETS["sasrec"](500, 10, SASRecConfig(hidden=64, layers=2, heads=2))
    assert abs(_std(net.pos_emb.weight) - 0.02) < 0.004  # was nn.Embedding's N(0, 1)
    assert abs(_std(net.item_emb.weight[1:]) - 0.02) < 0.002
    assert torch.count_nonzero(net.item_emb.weight[0]) == 0
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            assert abs(_std(m.weight) - 0.02) < 0.004 and torch.count_nonzero(m.bias) == 0
        if isinstance(m, torch.nn.MultiheadAttention):
            assert abs(_std(m.in_proj_weight) - 0.02) < 0.003 and torch.count_nonzero(m.in_proj_bias) == 0
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


def test_hstu_init_as_generative_recommenders():
    torch.manual_seed(0)
    d = 64
    net = NETS["hstu"](500, 10, HSTUConfig(hidden=d, layers=2, heads=2))
    assert net.item_emb.weight.abs().max() <= 0.04 + 1e-6 and 0.012 < _std(net.item_emb.weight[1:]) < 0.02
    assert net.pos_emb.weight.abs().max() <= 2 * (1 / d) ** 0.5 + 1e-6 and _std(net.pos_emb.weight) > 0.06
    for block in net.blocks:
        assert abs(_std(block.f1.weight) - 0.02) < 0.003 and torch.count_nonzero(block.f1.bias) == 0
        assert abs(_std(block.rab) - 0.02) < 0.01
        bound = math.sqrt(6 / (2 * d))  # xavier_uniform_ on the d x d output projection
        assert block.f2.weight.abs().max() <= bound and _std(block.f2.weight) > 0.8 * bound / math.sqrt(3)


def test_gru4rec_and_caser_init_as_recbole():
    torch.manual_seed(0)
    n, d = 2000, 64
    gru = NETS["gru4rec"](n, 10, GRU4RecConfig(hidden=d))
    assert abs(_std(gru.item_emb.weight[1:]) - math.sqrt(2 / (n + 1 + d))) < 0.002  # xavier_normal_
    bound = math.sqrt(6 / (d + 3 * d))  # xavier_uniform_ on the stacked [3d, d] gate weights
    assert gru.gru.weight_hh_l0.abs().max() <= bound and _std(gru.gru.weight_hh_l0) > 0.9 * bound / math.sqrt(3)
    assert torch.count_nonzero(gru.item_emb.weight[0]) == 0
    caser = Caser(n, 10, CaserConfig(hidden=d, n_v=2, n_h=4))
    assert abs(_std(caser.item_emb.weight[1:]) - 1 / d) < 0.001
    fan_in, fan_out = caser.fc.in_features, caser.fc.out_features
    assert abs(_std(caser.fc.weight) - math.sqrt(2 / (fan_in + fan_out))) < 0.01 and not caser.fc.bias.any()


def test_sasrec_item_identity_not_swamped_by_positions():
    """The init bug of issue 14: at init, the position part of SASRec's input must not dominate the item part."""
    torch.manual_seed(0)
    net = NETS["sasrec"](500, 10, SASRecConfig(hidden=64, layers=1, heads=2))
    item_part = (net.item_emb.weight[1:] * 64 ** 0.5).norm(dim=1).mean()
    pos_part = net.pos_emb.weight.norm(dim=1).mean()
    assert pos_part < item_part


def test_committed_baseline_files_hold_numbers_only():
    """Every committed baseline metrics file (summary and seed files) holds numbers only, with its run record
    (command, model) beside it; the metric keys are the one scheme (``HR@K`` SID level, ``item/HR@K``)."""
    files = [p for p in sorted((REPO / "results").glob("*/baselines/**/*.json")) if not p.name.endswith(".run.json")]
    if not files:
        pytest.skip("no committed baseline results")
    for path in files:
        numbers, record = json.loads(path.read_text()), json.loads(run_path(path).read_text())
        assert numbers_only(numbers), path
        assert record["command"].startswith("tsrec baseline --model") and record["model"] in MODELS, path
        assert read_metrics(path, allow_empty=True) or len(read_item_metrics(path)) == 10, path
        assert not set(numbers) & set(record), path
