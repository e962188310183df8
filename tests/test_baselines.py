import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tsrec.baselines import LEARNED, BaselinesConfig, build, run_model
from tsrec.baselines.sequential import Caser, CaserConfig
from tsrec.baselines.table import render, sanity
from tsrec.baselines.trainer import SeqData, train_pairs
from tsrec.config import section
from tsrec.data import load_index, rows_frame
from tsrec.errors import ParamError
from tsrec.io import write_json

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 32, "max_epochs": 2, "min_epochs": 1, "patience": 1, "max_minutes": 1.0}


def tiny_params(data_root, **extra) -> dict:
    base = {
        "seed": 0,
        "baselines": {
            "data": str(data_root), "max_len": 10, "topk": 20, "threads": 1, "train": FAST,
            "sasrec": {"hidden": 16, "layers": 1, "heads": 2}, "gru4rec": {"hidden": 16},
            "caser": {"hidden": 16, "n_v": 2, "n_h": 4}, "hstu": {"hidden": 16, "layers": 1, "heads": 2},
            "tiger": {"d_model": 16, "d_ff": 32, "layers": 1, "heads": 2, "beams": 20, "valid_beams": 20,
                      "eval_batch": 16, "valid_rows": 8, "train": {"max_epochs": 1}},
            "tuning": {m: [{}] for m in LEARNED},
        },
    }
    base["baselines"].update(extra)
    return base


def cfg_of(params) -> BaselinesConfig:
    return section(params, "baselines", BaselinesConfig)


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
    index = load_index(tiny_dataset / "sid_index.json")
    rec = build("tiger", data, cfg_of(params), {}, 0, index)
    fitted = rec.fit()
    assert fitted.epochs == 1
    valid_sids = {tuple(s) for s in index.values()}
    hist, targets = data.rows("test")
    lists = rec.decode(hist[:8], beams=20)
    assert len(lists) == 8
    for ranked in lists:
        assert 0 < len(ranked) <= 20 and len(set(ranked)) == len(ranked)
        assert set(ranked) <= valid_sids
    assert rec.keys(targets[:2]) == [tuple(index[t]) for t in targets[:2]]
    first = rec.vocab.item_sid[targets[0]]
    assert first[2] in rec.trie.allowed(first[:2]) and rec.trie.allowed(first[:1] + (10**6,)) == []
    assert rec.trie.allowed(first) == [1]  # EOS after a full SID
    with pytest.raises(ValueError, match="beams"):
        rec.recommend(hist[:1], 21)


@pytest.mark.parametrize("bad, match", [
    ({"models": ["pop", "bpr"]}, "unknown model"),
    ({"tuning": {"sasrec": [{}, {"lr": 0.01}], "gru4rec": [{}], "caser": [{}], "tiger": [{}], "hstu": [{}]}},
     "identical"),
    ({"tuning": {"sasrec": [{"hiddden": 8}], "gru4rec": [{}], "caser": [{}], "tiger": [{}], "hstu": [{}]}}, "hiddden"),
    ({"sasrec": {"hidden": 10, "heads": 4}}, "divisible"),
    ({"tiger": {"beams": 10}}, "beams"),
    ({"train": {"lr": -1.0}}, "lr"),
    ({"gru4rec": {"heads": 2}}, "heads"),  # a key the model does not have
])
def test_bad_params_refused(tmp_path, bad, match):
    with pytest.raises(ParamError, match=match):
        cfg_of(tiny_params(tmp_path, **bad))


def test_cli_pop_run_and_table(tiny_dataset, tmp_path, monkeypatch):
    from tsrec.cli import main

    params = tiny_params(tiny_dataset.parent)
    params["data"] = {"datasets": ["tiny"]}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "results"
    assert main(["--params", str(pfile), "baseline", "--model", "pop", "--dataset", "tiny", "--out", str(out)]) == 0
    rec = json.loads((out / "tiny" / "baselines" / "pop.json").read_text())
    assert rec["command"] == "tsrec baseline --model pop --dataset tiny"
    assert set(rec["metrics"]) == {f"{n}@{k}" for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
    assert rec["rows"]["test"] == 40 and rec["ranking"] == "full ranking over all items"
    assert main(["--params", str(pfile), "baseline", "--table", "--dataset", "tiny", "--out", str(out)]) == 0
    md = (out / "baselines.md").read_text()
    assert "| Pop" in md and "not run" in md and "published" in md.lower()
    # a bad dataset name is a one-line error, exit 2
    assert main(["--params", str(pfile), "baseline", "--model", "pop", "--dataset", "nope", "--out", str(out)]) == 2


def test_table_sanity_flags_a_model_below_pop(tmp_path):
    for model, ndcg in (("pop", 0.05), ("sasrec", 0.08), ("caser", 0.04)):
        metrics = {f"{n}@{k}": ndcg for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
        write_json(tmp_path / "d" / "baselines" / f"{model}.json", {"metrics": metrics})
    from tsrec.baselines.table import our_rows

    sft = {f"{n}@{k}": 0.1 for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")}
    write_json(tmp_path / "d" / "sft" / "metrics.json", sft)
    df = our_rows(tmp_path, "d")
    assert sanity(df) == ["Caser"]
    status = dict(zip(df["model"], df["status"]))
    assert status["LC-Rec (= our sft variant)"] == status["MiniOneRec-SFT (= our sft variant)"] == "ok"
    assert status["TIGER"] == status["BIGRec"] == status["HSTU"] == status["D3"] == "not run"
    assert "FAILS for Caser" in render(tmp_path, ["d"])


def test_committed_results_learned_models_beat_pop():
    """On the committed real results (if any): every learned baseline beats Pop on test NDCG@10."""
    found = 0
    for ds_dir in sorted((REPO / "results").glob("*/baselines")):
        pop = ds_dir / "pop.json"
        if not pop.is_file():
            continue
        pop_ndcg = json.loads(pop.read_text())["metrics"]["NDCG@10"]
        for path in ds_dir.glob("*.json"):
            rec = json.loads(path.read_text())
            if rec["model"] == "pop" or rec.get("max_rows"):
                continue
            found += 1
            assert rec["metrics"]["NDCG@10"] > pop_ndcg, f"{path}: {rec['metrics']['NDCG@10']} <= Pop {pop_ndcg}"
            assert math.isclose(rec["best_valid_NDCG@10"], rec["valid_metrics"]["NDCG@10"])
    if not found:
        pytest.skip("no committed baseline results yet")
