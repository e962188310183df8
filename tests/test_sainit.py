import json
import math

import pytest
import torch

from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.semantics.keyword_cache import read_records
from tsrec.lm.llm import LoraParams, add_sid_tokens, is_tied, load_backbone, prepare_for_finetune
from tsrec.model.sainit import SAInitConfig, sa_init

TOKENS = ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<c_0>", "<c_1>"]
KEYWORDS = {
    "<a_0>": ["drill bit", "steel", "saw blade"],
    "<a_1>": ["pen", "paper", "ink", "pen"],
    "<b_0>": ["valve", "pump", "filter"],
    "<b_1>": ["sensor", "relay switch"],
    "<c_0>": ["desk", "chair", "shelf"],
    "<c_1>": ["bolt", "nut", "screw", "steel"],
}


def _cache():
    return [{"token": t, "keywords": kw, "description": f"This product family comprises {kw[0]} and {kw[-1]}."}
            for t, kw in KEYWORDS.items()]


@pytest.fixture()
def setup(tiny_backbone):
    torch.manual_seed(0)
    model, tok = load_backbone(tiny_backbone)
    n_old = len(tok)
    ids = dict(zip(TOKENS, add_sid_tokens(model, tok, TOKENS)))
    before = model.get_input_embeddings().weight.detach().clone()
    target = before[:n_old].norm(dim=1).mean()
    return model, tok, ids, before, n_old, target


def _pieces(tok, t, source="keywords"):
    rec = {r["token"]: r for r in _cache()}[t]
    text = " ".join(rec["keywords"]) if source == "keywords" else rec["description"]
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("pooling", ["mean", "idf", "max"])
def test_rows_equal_hand_pooled(setup, pooling):
    model, tok, ids, before, n_old, _ = setup
    report = sa_init(model, tok, ids, _cache(), SAInitConfig(pooling=pooling, rescale=False))
    assert report["initialised"] == 6
    docs = {t: _pieces(tok, t) for t in TOKENS}
    n = len(docs)
    for t in TOKENS:
        rows = before[docs[t]]
        if pooling == "mean":
            want = rows.sum(0) / len(docs[t])
        elif pooling == "max":
            want = torch.stack([rows[:, j].max() for j in range(rows.shape[1])])
        else:
            w = torch.tensor([math.log((1 + n) / (1 + sum(p in d for d in docs.values()))) + 1 for p in docs[t]])
            want = (rows * w[:, None]).sum(0) / w.sum()
        torch.testing.assert_close(model.get_input_embeddings().weight[ids[t]], want)
    assert is_tied(model)
    torch.testing.assert_close(model.get_output_embeddings().weight[ids["<a_0>"]],
                               model.get_input_embeddings().weight[ids["<a_0>"]])


def test_idf_differs_from_mean(setup, tiny_backbone):
    model, tok, ids, *_ = setup
    sa_init(model, tok, ids, _cache(), SAInitConfig(pooling="idf", rescale=False))
    idf_row = model.get_input_embeddings().weight[ids["<c_1>"]].detach().clone()
    sa_init(model, tok, ids, _cache(), SAInitConfig(pooling="mean", rescale=False))
    assert not torch.allclose(idf_row, model.get_input_embeddings().weight[ids["<c_1>"]])


def test_rescale_hits_target_norm_and_keeps_direction(setup):
    model, tok, ids, before, n_old, target = setup
    sa_init(model, tok, ids, _cache(), SAInitConfig())
    w = model.get_input_embeddings().weight
    for t in TOKENS:
        torch.testing.assert_close(w[ids[t]].norm(), target)
        mean = before[_pieces(tok, t)].mean(0)
        torch.testing.assert_close(w[ids[t]], mean * target / mean.norm())


def test_untouched_rows_and_levels(setup):
    model, tok, ids, before, n_old, _ = setup
    sa_init(model, tok, ids, _cache(), {"levels": ["a", "c"]})
    w = model.get_input_embeddings().weight
    assert torch.equal(w[:n_old], before[:n_old])
    for t in ("<b_0>", "<b_1>"):
        assert torch.equal(w[ids[t]], before[ids[t]])
    for t in ("<a_0>", "<c_1>"):
        assert not torch.equal(w[ids[t]], before[ids[t]])
    assert is_tied(model)


def test_random_is_a_noop(setup):
    model, tok, ids, before, *_ = setup
    report = sa_init(model, tok, ids, [], SAInitConfig(random=True))
    assert report["initialised"] == 0
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_description_and_both_sources(setup):
    model, tok, ids, before, *_ = setup
    sa_init(model, tok, ids, _cache(), SAInitConfig(source="description", rescale=False))
    want = before[_pieces(tok, "<b_1>", "description")].mean(0)
    torch.testing.assert_close(model.get_input_embeddings().weight[ids["<b_1>"]], want)
    sa_init(model, tok, ids, _cache(), SAInitConfig(source="both", rescale=False))
    rec = {r["token"]: r for r in _cache()}["<b_1>"]
    both = tok(" ".join(rec["keywords"]) + " " + rec["description"], add_special_tokens=False).input_ids
    torch.testing.assert_close(model.get_input_embeddings().weight[ids["<b_1>"]], before[both].mean(0))


def test_contextual_is_mean_of_last_hidden_states(setup):
    model, tok, ids, *_ = setup
    model.train()
    expected = {}
    with torch.no_grad():
        model.eval()
        for t in ("<a_1>", "<c_0>"):  # one text at a time: no padding
            h = model.model(input_ids=torch.tensor([_pieces(tok, t)])).last_hidden_state[0]
            expected[t] = h.mean(0)
        model.train()
    sa_init(model, tok, ids, _cache(), SAInitConfig(pooling="contextual", rescale=False, batch_size=4))
    assert model.training  # mode restored
    for t, want in expected.items():
        torch.testing.assert_close(model.get_input_embeddings().weight[ids[t]], want, atol=1e-5, rtol=1e-4)


def test_tied_after_sainit_and_lora(setup):
    model, tok, ids, *_ = setup
    sa_init(model, tok, ids, _cache(), SAInitConfig())
    row = model.get_input_embeddings().weight[ids["<b_0>"]].detach().clone()
    peft_model = prepare_for_finetune(model, "lora", LoraParams(r=2, alpha=4, dropout=0.0), list(ids.values()))
    inp = peft_model.get_input_embeddings()(torch.tensor([ids["<b_0>"]]))[0]
    out = peft_model.get_output_embeddings()(torch.eye(inp.shape[0])).T[ids["<b_0>"]]
    torch.testing.assert_close(inp, row)
    torch.testing.assert_close(out, row)
    with pytest.raises(TsrecError, match="before prepare_for_finetune"):
        sa_init(peft_model, tok, ids, _cache(), SAInitConfig())


def test_missing_tokens_and_empty_keywords_refused(setup):
    model, tok, ids, before, *_ = setup
    cache = [r for r in _cache() if r["token"] not in ("<b_1>", "<c_0>")]
    with pytest.raises(TsrecError, match=r"missing 2 token\(s\).*<b_1>, <c_0>"):
        sa_init(model, tok, ids, cache, SAInitConfig())
    # a cache for other levels only is fine when those levels are not initialised
    sa_init(model, tok, ids, [r for r in _cache() if r["token"].startswith("<a_")], SAInitConfig(levels=["a"]))
    cache = _cache()
    cache[3]["keywords"] = []
    with pytest.raises(TsrecError, match=r"<b_1>.*empty keyword list"):
        sa_init(model, tok, ids, cache, SAInitConfig())
    cache[3]["keywords"] = ["  "]
    with pytest.raises(TsrecError, match="empty keyword list"):
        sa_init(model, tok, ids, cache, SAInitConfig())
    sa_init(model, tok, ids, cache, SAInitConfig(source="description"))  # keywords not needed then
    cache[3]["keywords"], cache[3]["description"] = ["relay"], ""
    with pytest.raises(TsrecError, match="empty description"):
        sa_init(model, tok, ids, cache, SAInitConfig(source="both"))


def test_bad_params_refused():
    for bad in ({"levels": ["d"]}, {"levels": ["a", "a"]}, {"pooling": "sum"}, {"source": "title"},
                {"rescale": "yes"}, {"batch_size": 0}, {"extra": 1}):
        with pytest.raises(ParamError):
            section({"sainit": bad}, "sainit", SAInitConfig)
    assert section({"sainit": {"levels": []}}, "sainit", SAInitConfig).levels == []


def test_read_records(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps(_cache()))
    assert len(read_records(p)) == 6
    p.write_text("{not json")
    with pytest.raises(TsrecError, match="invalid JSON"):
        read_records(p)
    p.write_text(json.dumps([{"keywords": []}]))
    with pytest.raises(TsrecError, match="token"):
        read_records(p)
    with pytest.raises(TsrecError, match="not found"):
        read_records(tmp_path / "none.json")


def test_cache_errors_name_the_file_extra_and_non_string_refused(setup, tmp_path):
    model, tok, ids, *_ = setup
    p = tmp_path / "authors.json"

    def refused(cache, match, cfg=None):
        p.write_text(json.dumps(cache))
        with pytest.raises(TsrecError, match=match) as exc:
            sa_init(model, tok, ids, read_records(p), cfg or SAInitConfig())
        assert exc.value.file == p, exc.value

    refused([r for r in _cache() if r["token"] != "<b_1>"], r"missing 1 token\(s\)")
    refused(_cache() + _cache()[:1], "lists a token twice")
    cache = _cache()
    cache[3]["keywords"] = [" "]
    refused(cache, "empty keyword list")
    refused(_cache() + [{"token": "<d_9>", "keywords": ["x"], "description": "y"}], r"not in the index.*<d_9>")
    # only levels a are initialised: the other levels' tokens are the index's, not extra
    p.write_text(json.dumps(_cache()))
    sa_init(model, tok, ids, read_records(p), SAInitConfig(levels=["a"]))
    cache = _cache()
    cache[0]["keywords"] = ["drill", 7, None]
    p.write_text(json.dumps(cache))
    with pytest.raises(TsrecError, match="list of strings") as exc:
        read_records(p)
    assert exc.value.file == p and exc.value.line == cache[0]["token"]


def test_current_table_target_is_the_authors_running_mean(setup):
    """rescale_target current_table = the authors' loop: in the cache's order, each row is rescaled to the mean
    norm of the WHOLE table as it is then (new rows included, earlier SA-Init rows already written)."""
    model, tok, ids, before, n_old, target = setup
    cache = list(reversed(_cache()))  # cache order, not token order, decides the targets
    expected = before.clone()
    for rec in cache:
        mean = before[_pieces(tok, rec["token"])].mean(0)
        expected[ids[rec["token"]]] = mean * (expected.norm(dim=1).mean() / mean.norm())
    report = sa_init(model, tok, ids, cache, SAInitConfig(rescale_target="current_table"))
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(), expected, rtol=1e-5, atol=1e-6)
    first, last = report["target_norm_first_last"]
    assert first == pytest.approx(before.norm(dim=1).mean().item(), rel=1e-6)  # old rows + mean-resized new rows
    assert first != pytest.approx(target.item(), rel=1e-4) and last != pytest.approx(first, rel=1e-6)
