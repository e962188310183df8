"""TIGER decodes with tsrec.lm.decoding.seq2seq_beam_search: same rankings and scores as HF generate."""

import pytest
import torch

from tsrec.baselines.config import BaselinesConfig
from tsrec.baselines.protocol import build
from tsrec.baselines.generative import EOS, PAD
from tsrec.baselines.trainer import SeqData
from tsrec.core.config import section
from tsrec.lm.decoding import SidTrie, seq2seq_beam_search


def _tiger(tiny_dataset, seed=0, d_model=32):
    params = {"baselines": {"data": str(tiny_dataset.parent), "seeds": [0],
                            "tiger": {"d_model": d_model, "d_ff": 64, "layers": 2, "heads": 2, "beams": 20,
                                      "valid_beams": 20, "eval_batch": 16, "valid_rows": 8},
                            "tuning": {"lr": [0.001], "dropout": [0.1], "width": [d_model]}}}
    cfg = section(params, "baselines", BaselinesConfig)
    return build("tiger", SeqData(tiny_dataset), cfg, {}, seed)


def hf_reference(rec, histories, beams):
    """The previous TIGER decoder: HF generate with a prefix_allowed_tokens_fn over the same trie."""
    ids, mask = rec.encode(histories)
    levels = rec.vocab.levels

    def allowed(_b, prefix):
        return rec.trie.allowed(prefix.tolist()[1:]) or [EOS]

    out = rec.model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                             max_new_tokens=levels + 1, prefix_allowed_tokens_fn=allowed, do_sample=False,
                             early_stopping=True, length_penalty=0.0, pad_token_id=PAD, eos_token_id=EOS,
                             decoder_start_token_id=PAD, output_scores=True, return_dict_in_generate=True)
    seqs = out.sequences.view(len(histories), beams, -1).tolist()
    scores = out.sequences_scores.view(len(histories), beams).tolist()
    lists = []
    for row, row_scores in zip(seqs, scores):
        ranked = [(tuple(s[1:1 + levels]), sc) for s, sc in zip(row, row_scores)
                  if rec.trie.sid_id(s[1:1 + levels]) is not None and sc > -1e8]
        lists.append(ranked)
    return lists


@pytest.mark.parametrize("seed, beams", [(0, 20), (1, 5)])
def test_own_beam_search_equals_hf_generate(tiny_dataset, seed, beams):
    rec = _tiger(tiny_dataset, seed)
    rec.model.eval()
    hist, _ = rec.data.rows("test")
    hist = hist[:12]
    ref = hf_reference(rec, hist, beams)
    ids, mask = rec.encode(hist)
    ours = seq2seq_beam_search(rec.model, ids, mask, rec.trie, beams, decoder_start_token_id=PAD)
    for r, ranked in enumerate(ref):
        got = [(rec.trie.sids[s], sc) for s, sc in zip(ours.sid_ids[r].tolist(), ours.scores[r].tolist()) if s >= 0]
        assert [s for s, _ in got] == [s for s, _ in ranked]  # same SIDs, same order
        assert torch.allclose(torch.tensor([sc for _, sc in got]), torch.tensor([sc for _, sc in ranked]), atol=1e-4)
    # and TIGER.decode (what evaluation uses) returns exactly these SIDs as token strings
    decoded = rec.decode(hist, beams)
    assert decoded == [[rec.vocab.text(s) for s, _ in ranked] for ranked in ref]


def test_seq2seq_beam_search_fewer_sids_than_beams():
    """A trie with 3 SIDs and 5 beams: 3 ranked SIDs, then -1 / -inf padding."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=10, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                num_decoder_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1,
                                                decoder_start_token_id=0)).eval()
    trie = SidTrie([(2, 5), (2, 6), (3, 7)], eos_id=1)
    ids = torch.tensor([[4, 5, 6], [7, 0, 0]])
    res = seq2seq_beam_search(model, ids, (ids != 0).long(), trie, 5, decoder_start_token_id=0)
    assert res.sid_ids.shape == (2, 5)
    for row, sc in zip(res.sid_ids.tolist(), res.scores.tolist()):
        assert sorted(row[:3]) == [0, 1, 2] and row[3:] == [-1, -1]
        assert sc[0] >= sc[1] >= sc[2] > float("-inf") and sc[3] == sc[4] == float("-inf")
