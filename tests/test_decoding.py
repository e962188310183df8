import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsrec.lm.decoding import SidTrie, beam_search, left_pad, reference_beam_search, search_batches
from tsrec.core.errors import TsrecError
from tsrec.lm.llm import add_sid_tokens
from tsrec.core.precision import autocast


def random_index(n_sids: int, codes: int, seed: int, levels: int = 3) -> dict[int, list[str]]:
    rng = random.Random(seed)
    sids: set[tuple[str, ...]] = set()
    while len(sids) < n_sids:
        sids.add(tuple(f"<{chr(97 + lv)}_{rng.randrange(codes)}>" for lv in range(levels)))
    return {i: list(s) for i, s in enumerate(sorted(sids))}


def sid_model(backbone, codes: int, levels: int = 3, seed: int = 0):
    """The tiny backbone + SID tokens (tsrec.lm.llm.add_sid_tokens); new rows re-drawn at full scale, since
    mean-resizing makes them near-identical and near-tied scores would make rankings fragile."""
    tok = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForCausalLM.from_pretrained(backbone)
    old = len(tok)
    add_sid_tokens(model, tok, [f"<{chr(97 + lv)}_{c}>" for lv in range(levels) for c in range(codes)])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = torch.randn(emb[old:].shape, generator=g) * emb[:old].std()
    return model.eval(), tok


@pytest.fixture(scope="module")
def tiny_sid(tiny_backbone):
    return sid_model(tiny_backbone, codes=8)


def encode(tok, prompts: list[str]) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in prompts]


def random_prompts(tok, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "drill bit steel saw blade glove tape wire pen paper user history next item".split()
    out = []
    for _ in range(n):
        hist = "".join(f"<a_{rng.randrange(8)}><b_{rng.randrange(8)}><c_{rng.randrange(8)}>"
                       for _ in range(rng.randint(1, 5)))
        out.append(" ".join(rng.sample(words, rng.randint(1, 6))) + ": " + hist + " next:")
    return out


def test_trie_tables_and_allowed():
    trie = SidTrie([[10, 20, 30], [10, 21, 31], [11, 20, 30], [10, 20, 32]], eos_id=2)
    assert trie.depth == 3 and len(trie) == 4
    assert trie.allowed([]) == [10, 11]
    assert trie.allowed([10]) == [20, 21]
    assert trie.allowed([10, 20]) == [30, 32]
    assert trie.allowed([10, 20, 32]) == [2]          # EOS only after a full SID
    assert trie.allowed([10, 20, 33]) == [] and trie.allowed([12]) == []
    assert trie.sid_id([11, 20, 30]) == 3 and trie.sid_id([11, 20, 31]) is None
    assert trie.child_tok[0].tolist() == [[10, 11]]
    assert trie.child_tok[1].tolist() == [[20, 21], [20, -1]]
    # leaves are the sorted SIDs
    assert trie.sids == sorted(trie.sids)


def test_trie_rejects_bad_input():
    with pytest.raises(TsrecError, match="same length"):
        SidTrie([[1, 2, 3], [1, 2]], eos_id=0)
    with pytest.raises(TsrecError, match="duplicate"):
        SidTrie([[1, 2, 3], [1, 2, 3]], eos_id=0)
    with pytest.raises(TsrecError, match="EOS"):
        SidTrie([[1, 2, 3]], eos_id=3)


def test_from_index_groups_colliding_items(tiny_sid):
    _, tok = tiny_sid
    index = {5: ["<a_1>", "<b_2>", "<c_3>"], 7: ["<a_1>", "<b_2>", "<c_3>"], 9: ["<a_0>", "<b_0>", "<c_0>"]}
    trie = SidTrie.from_index(index, tok)
    assert len(trie) == 2
    assert sorted(map(sorted, trie.items)) == [[5, 7], [9]]
    k = trie.names.index("<a_1><b_2><c_3>")
    assert trie.items[k] == [5, 7]
    with pytest.raises(TsrecError, match="not in the tokenizer"):
        SidTrie.from_index({1: ["<a_99>", "<b_0>", "<c_0>"]}, tok)


def assert_same_up_to_ties(ours, ref, atol: float) -> None:
    """Each rank holds a SID whose reference score equals the reference's score at that rank within atol
    (a SID past the reference's cut-off must score within atol of the reference's last kept beam)."""
    for r, (row_o, row_r, sc_r) in enumerate(zip(ours.sid_ids.tolist(), ref.sid_ids.tolist(),
                                                 ref.scores.tolist())):
        ref_score = dict(zip(row_r, sc_r))
        assert sum(s >= 0 for s in row_o) == sum(s >= 0 for s in row_r)
        for i, sid in enumerate(row_o):
            if sid < 0:
                continue
            if sid in ref_score:
                assert abs(ref_score[sid] - sc_r[i]) <= atol, (r, i, sid)
            else:
                last = max(j for j, s in enumerate(row_r) if s >= 0)
                assert abs(float(ours.scores[r, i]) - sc_r[last]) <= atol, (r, i, sid)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("n_sids,beams,seed", [(150, 20, 0), (60, 8, 1), (5, 8, 2)])
def test_beam_search_matches_hf_generate(tiny_sid, n_sids, beams, seed, precision):
    """Ranked SIDs identical to HF generate + prefix_allowed_tokens_fn (length_penalty=0), scores equal;
    in each precision (bf16 = autocast, as `evaluate.precision` runs it) against the reference in the same one."""
    model, tok = tiny_sid
    trie = SidTrie.from_index(random_index(n_sids, codes=8, seed=seed), tok)
    ids, mask = left_pad(encode(tok, random_prompts(tok, 5, seed)), tok.pad_token_id)
    assert (mask == 0).any()  # the batch really is left-padded
    with autocast(precision):
        ref = reference_beam_search(model, ids, mask, trie, num_beams=beams)
        ours = beam_search(model, ids, mask, trie, num_beams=beams)
        copied = beam_search(model, ids, mask, trie, num_beams=beams, shared_prefix=False)  # HF-style cache copies
    assert torch.equal(copied.sid_ids, ref.sid_ids)
    assert ours.sid_ids.shape == ref.sid_ids.shape == (ids.shape[0], beams)
    if precision == "fp32":
        assert torch.equal(ours.sid_ids, ref.sid_ids)
    else:  # shared-prefix attention rounds differently in bf16: only near-ties (< 0.01 apart) may swap
        assert_same_up_to_ties(ours, ref, atol=1e-2)
    found = ours.sid_ids >= 0
    assert (found.sum(1) == min(beams, n_sids)).all()   # fewer SIDs than beams: padded with -1
    assert torch.isinf(ours.scores[~found]).all()
    torch.testing.assert_close(ours.scores[found], ref.scores[found], rtol=0,
                               atol=1e-4 if precision == "fp32" else 2e-2)
    # distinct, valid, best first
    for row, sc in zip(ours.sid_ids.tolist(), ours.scores.tolist()):
        valid = [s for s in row if s >= 0]
        assert len(set(valid)) == len(valid)
        assert sc[:len(valid)] == sorted(sc[:len(valid)], reverse=True)


def test_batching_does_not_change_results(tiny_sid):
    """Each prompt alone == in a padded batch == through search_batches (length-sorted batches)."""
    model, tok = tiny_sid
    trie = SidTrie.from_index(random_index(120, codes=8, seed=3), tok)
    prompts = random_prompts(tok, 6, seed=3)
    batched = search_batches(model, encode(tok, prompts), trie, pad_id=tok.pad_token_id, num_beams=10,
                             batch_size=4)
    for i, p in enumerate(prompts):
        ids, mask = left_pad(encode(tok, [p]), tok.pad_token_id)
        alone = beam_search(model, ids, mask, trie, num_beams=10)
        assert alone.sid_ids[0].tolist() == batched.sid_ids[i].tolist()
        torch.testing.assert_close(alone.scores[0], batched.scores[i], rtol=0, atol=1e-4)


def test_scores_are_full_vocab_log_probs(tiny_sid):
    """The returned score of a SID is log p(SID, EOS | prompt) under the model, over the full vocabulary."""
    model, tok = tiny_sid
    trie = SidTrie.from_index(random_index(40, codes=8, seed=4), tok)
    prompt = random_prompts(tok, 1, seed=4)[0]
    ids, mask = left_pad(encode(tok, [prompt]), tok.pad_token_id)
    res = beam_search(model, ids, mask, trie, num_beams=4)
    for sid, score in zip(res.sid_ids[0].tolist(), res.scores[0].tolist()):
        seq = torch.tensor([ids[0].tolist() + list(trie.sids[sid]) + [trie.eos_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq).logits[0, ids.shape[1] - 1:-1].float(), -1)
        expect = logp.gather(-1, seq[0, ids.shape[1]:, None]).sum().item()
        assert score == pytest.approx(expect, abs=1e-4)


def test_left_padding_is_required(tiny_sid):
    model, tok = tiny_sid
    trie = SidTrie.from_index(random_index(10, codes=8, seed=5), tok)
    ids, mask = left_pad(encode(tok, ["drill", "drill bit steel saw"]), tok.pad_token_id)
    with pytest.raises(ValueError, match="LEFT"):
        beam_search(model, ids.flip(1), mask.flip(1), trie, num_beams=2)


def test_grouped_query_attention_model_matches_hf(tiny_backbone):
    """Shared-prefix attention with GQA (4 query heads over 2 KV heads, as SmolLM2's 9 over 3)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    tok.add_tokens([f"<{chr(97 + lv)}_{c}>" for lv in range(3) for c in range(8)])
    cfg = LlamaConfig.from_pretrained(tiny_backbone)
    cfg.num_key_value_heads, cfg.vocab_size = 2, len(tok)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    trie = SidTrie.from_index(random_index(100, codes=8, seed=6), tok)
    ids, mask = left_pad(encode(tok, random_prompts(tok, 4, seed=6)), tok.pad_token_id)
    ours = beam_search(model, ids, mask, trie, num_beams=12)
    ref = reference_beam_search(model, ids, mask, trie, num_beams=12)
    assert torch.equal(ours.sid_ids, ref.sid_ids)
    torch.testing.assert_close(ours.scores, ref.scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_suffix_before_eos_matches_hf_generate(tiny_sid, shared_prefix):
    """A trie with the authors' "\\n" between SID and EOS: the suffix is forced, scored, and the ranking
    equals HF generate's; the scores differ from the EOS-only trie's by the suffix's log-probs."""
    model, tok = tiny_sid
    index = random_index(60, codes=8, seed=3)
    trie = SidTrie.from_index(index, tok, suffix="\n")
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert trie.end == (*nl, tok.eos_token_id) and len(trie.end) >= 2
    sid = trie.sids[0]
    assert trie.allowed(sid) == [nl[0]] and trie.allowed((*sid, nl[0])) == ([nl[1]] if len(nl) > 1 else [tok.eos_token_id])
    assert trie.allowed((*sid, tok.eos_token_id)) == []  # EOS straight after the SID is not allowed
    ids, mask = left_pad(encode(tok, random_prompts(tok, 4, 5)), tok.pad_token_id)
    ref = reference_beam_search(model, ids, mask, trie, num_beams=10)
    ours = beam_search(model, ids, mask, trie, num_beams=10, shared_prefix=shared_prefix)
    assert torch.equal(ours.sid_ids, ref.sid_ids)
    torch.testing.assert_close(ours.scores, ref.scores, rtol=0, atol=1e-4)
    plain = beam_search(model, ids, mask, SidTrie.from_index(index, tok), num_beams=10)
    assert not torch.allclose(plain.scores, ours.scores)


def test_generation_config_defaults_do_not_leak(tiny_sid, tmp_path):
    """MiniOneRec's pitfall: a checkpoint whose generation_config.json samples (do_sample, top_k, ...) must
    change neither our search nor the HF reference; a plain `generate` call does inherit it (the guard is live)."""
    from transformers import GenerationConfig

    model, tok = tiny_sid
    trie = SidTrie.from_index(random_index(60, codes=8, seed=4), tok)
    ids, mask = left_pad(encode(tok, random_prompts(tok, 4, 6)), tok.pad_token_id)
    clean_ours = beam_search(model, ids, mask, trie, num_beams=8)
    clean_ref = reference_beam_search(model, ids, mask, trie, num_beams=8)
    hostile = GenerationConfig(do_sample=True, top_k=2, top_p=0.5, temperature=0.3, repetition_penalty=5.0,
                               num_beams=2, length_penalty=3.0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hostile.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.generation_config.do_sample and loaded.generation_config.top_k == 2
    torch.manual_seed(0)
    ours = beam_search(loaded, ids, mask, trie, num_beams=8)
    ref = reference_beam_search(loaded, ids, mask, trie, num_beams=8)
    assert torch.equal(ours.sid_ids, clean_ours.sid_ids) and torch.equal(ref.sid_ids, clean_ref.sid_ids)
    torch.testing.assert_close(ref.scores, clean_ref.scores, rtol=0, atol=1e-5)
    assert loaded.generation_config.do_sample  # restored after the reference search
    # without the guard, generate takes the file's options the call leaves unset (here: repetition_penalty)
    prompt_len = ids.shape[1]
    raw = loaded.generate(input_ids=ids, attention_mask=mask, num_beams=8, num_return_sequences=8,
                          length_penalty=0.0, do_sample=False, max_new_tokens=trie.depth + 1,
                          prefix_allowed_tokens_fn=lambda _b, s: trie.allowed(s[prompt_len:].tolist()),
                          eos_token_id=trie.eos_id, pad_token_id=trie.eos_id, output_scores=True,
                          return_dict_in_generate=True)
    assert not torch.allclose(raw.sequences_scores.float().view(4, 8), clean_ref.scores, atol=1e-3)
