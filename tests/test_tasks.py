import json
from collections import Counter

import pytest
from sid_setup import tokenizer_and_cache

from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.model.sft import Collator
from tsrec.model.tasks import (
    IGNORE,
    TASKS,
    TasksConfig,
    build_examples,
    draw,
    encode_prompt,
    load_corpus,
    load_descriptions,
    seqrec_prompt,
)


@pytest.fixture()
def setup(tiny_dataset, tiny_backbone, tmp_path):
    kw, tok, tokens = tokenizer_and_cache(tiny_dataset, tiny_backbone, tmp_path / "kw.json")
    return tiny_dataset, kw, tok, tokens


def corpus_for(setup, **cfg):
    ds, kw, _, _ = setup
    return load_corpus(ds, ds / "sid_index.json", kw, section({"tasks": cfg}, "tasks", TasksConfig))


def test_exactly_two_tsalign_samples_per_token(setup):
    corpus = corpus_for(setup)
    pairs = draw(TASKS["tsalign"], corpus, 1.0, seed=0)
    tokens = setup[3]
    assert len(pairs) == 2 * len(tokens)
    t2d = Counter(t for t in tokens for p, _ in pairs if p[-1].endswith(f"token {t} share?"))
    d2t = Counter(r for _, r in pairs if r in tokens)
    assert t2d == Counter(tokens) and d2t == Counter(tokens)


def test_labels_masked_outside_responses_and_pads(setup):
    _, _, tok, _ = setup
    corpus = corpus_for(setup, item2sid={"share": 0.5})
    rows = build_examples(corpus, tok, seed=0)
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows[:200]:
        ids, labels = r["input_ids"], r["labels"]
        n_prompt = sum(1 for x in labels if x == IGNORE)
        assert labels[:n_prompt] == [IGNORE] * n_prompt          # prompt masked, response contiguous at the end
        assert labels[n_prompt:] == ids[n_prompt:] and labels[-1] == tok.eos_token_id
    batch = Collator(tok.pad_token_id)([rows[0], rows[-1]])
    short = 0 if len(rows[0]["input_ids"]) < len(rows[-1]["input_ids"]) else 1
    n = len((rows[0], rows[-1])[short]["input_ids"])
    assert tok.pad_token_id == tok.eos_token_id
    assert (batch["input_ids"][short, n:] == tok.pad_token_id).all()
    assert (batch["labels"][short, n:] == IGNORE).all()             # pads masked by position ...
    assert batch["labels"][short, n - 1] == tok.eos_token_id        # ... the real EOS label is kept
    assert batch["attention_mask"][short, n:].sum() == 0


def test_seqrec_prompt_is_the_training_prefix(setup):
    _, _, tok, _ = setup
    corpus = corpus_for(setup)
    hist, target = corpus.rows[3]
    text = seqrec_prompt([corpus.sids[i] for i in hist])
    assert corpus.sids[hist[0]] in text[-1]
    rows = [r for r in build_examples(corpus, tok, seed=0) if r["task"] == "seqrec"]
    prompt = encode_prompt(tok, text)
    target_ids = tok(corpus.sids[target], add_special_tokens=False)["input_ids"]
    assert len(target_ids) == 3  # SID tokens are single added tokens
    assert any(r["input_ids"] == prompt + target_ids + [tok.eos_token_id] for r in rows)


def test_shares_switches_weights_and_max_len(setup):
    _, _, tok, tokens = setup
    corpus = corpus_for(setup, sid2item={"share": 0.5}, item2sid={"enabled": False}, tsalign={"weight": 0.25},
                        seqrec={"share": 2.0}, max_len=20)
    rows = build_examples(corpus, tok, seed=0)
    count = Counter(r["task"] for r in rows)
    assert count["item2sid"] == 0
    assert count["sid2item"] == round(0.5 * len(corpus.sids))
    assert count["seqrec"] == 2 * len(corpus.rows)
    assert count["tsalign"] == 2 * len(tokens)
    assert {r["weight"] for r in rows if r["task"] == "tsalign"} == {0.25}
    assert {r["weight"] for r in rows if r["task"] != "tsalign"} == {1.0}
    assert max(len(r["input_ids"]) for r in rows) <= 20
    # the same seed draws the same mixture; another seed another one
    again = build_examples(corpus, tok, seed=0)
    assert [r["input_ids"] for r in again] == [r["input_ids"] for r in rows]
    assert [r["input_ids"] for r in build_examples(corpus, tok, seed=1)] != [r["input_ids"] for r in rows]


def test_keyword_cache_refused(setup, tmp_path):
    _, _, _, tokens = setup
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"token": t, "keywords": [], "description": "x"} for t in tokens[2:]]))
    with pytest.raises(TsrecError, match=f"missing 2 token.s. of the index: {tokens[0]}, {tokens[1]}$"):
        load_descriptions(bad, tokens)
    bad.write_text(json.dumps([{"token": t, "description": " "} for t in tokens]))
    with pytest.raises(TsrecError, match="empty description"):
        load_descriptions(bad, tokens)


@pytest.mark.parametrize("cfg, field", [
    ({"seqrec": {"share": 0}}, "share"),
    ({"tsalign": {"weight": -1}}, "weight"),
    ({"seqrec": {"enabled": False}}, "seqrec"),
    ({"bogus": {}}, "bogus"),
    ({"tsalign": {"lambda": 2}}, "lambda"),
    ({"max_len": 4}, "max_len"),
])
def test_bad_task_params_refused(cfg, field):
    with pytest.raises(ParamError, match=field):
        section({"tasks": cfg}, "tasks", TasksConfig)
