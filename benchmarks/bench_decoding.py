"""Constrained beam search throughput: ours (tsrec.lm.decoding.beam_search) vs the HF reference
(generate + prefix_allowed_tokens_fn), same model, prompts, trie and beam width, in one run.

    flock /tmp/tsrec-cpu.lock python -m pytest -q benchmarks/bench_decoding.py --benchmark-enable -s

Model: a random llama with the SmolLM2-135M shapes (hidden 576, 9/3 heads, vocab 49,152 + 768 SID
tokens, TSREC_BENCH_LAYERS layers, default 8 = the CPU profile), or a real backbone folder given in
TSREC_BENCH_BACKBONE (loaded with keep_layers = TSREC_BENCH_LAYERS). The trie has the shape of the official
Industrial index (3,670 SIDs over 48 x 48 x 256 codes). Prompts follow tsrec.model.tasks.seqrec_prompt (5-10 SIDs
of history). TSREC_BENCH_PROMPTS prompts (default 16) in batches of 8, B = 20.
`test_speedup` prints the ratio and writes it to $TSREC_BENCH_OUT (JSON) when set.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tsrec.lm.decoding import SidTrie, beam_search, left_pad, reference_beam_search

B = 20
BATCH = 8
LAYERS = int(os.environ.get("TSREC_BENCH_LAYERS", "8"))
N_PROMPTS = int(os.environ.get("TSREC_BENCH_PROMPTS", "16"))


def _index(seed: int = 0) -> dict[int, list[str]]:
    rng = random.Random(seed)
    sids: set[tuple[int, int, int]] = set()
    while len(sids) < 3670:
        sids.add((rng.randrange(48), rng.randrange(48), rng.randrange(256)))
    return {i: [f"<a_{a}>", f"<b_{b}>", f"<c_{c}>"] for i, (a, b, c) in enumerate(sorted(sids))}


def _model_and_tokenizer(tokens: list[str]):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tsrec.lm.llm import add_sid_tokens, load_backbone
    from tsrec.lm.tiny import make_tiny_backbone

    torch.manual_seed(0)
    path = os.environ.get("TSREC_BENCH_BACKBONE")
    if path:
        model, tok = load_backbone(path, keep_layers=LAYERS)
        ids = add_sid_tokens(model, tok, tokens)
        # stand-in for trained SID rows: mean-resized rows are near-identical, so an untrained model's
        # SID scores tie within float noise (~1e-5) and no two implementations would rank them alike
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[ids] = torch.randn(len(ids), emb.shape[1]) * emb[:min(ids)].std()
        return model.eval(), tok, f"{Path(path).name} (first {LAYERS} layers) + random SID rows"
    # a real (tiny BPE) tokenizer + SID tokens; the model has SmolLM2's vocabulary size (speed depends on it)
    tok = AutoTokenizer.from_pretrained(make_tiny_backbone(Path(tempfile.mkdtemp()) / "tok"))
    tok.add_tokens(tokens)
    cfg = LlamaConfig(vocab_size=49152 + len(tokens), hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=LAYERS, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok, f"random llama, SmolLM2-135M shapes, {LAYERS} layers"


@pytest.fixture(scope="module")
def setup():
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    index = _index()
    tokens = sorted({t for s in index.values() for t in s}, key=lambda t: (t[1], int(t[3:-1])))
    model, tok, desc = _model_and_tokenizer(tokens)
    trie = SidTrie.from_index(index, tok)
    rng = random.Random(1)
    sids = ["".join(s) for s in index.values()]
    prompts = sorted((encode_prompt(tok, seqrec_prompt(rng.sample(sids, rng.randint(5, 10))))
                      for _ in range(N_PROMPTS)), key=len)
    batches = [left_pad(prompts[i:i + BATCH], tok.pad_token_id) for i in range(0, len(prompts), BATCH)]
    return {"model": model, "trie": trie, "batches": batches, "desc": desc,
            "prompt_tokens": sum(map(len, prompts)) / len(prompts)}


def _ours(s):
    return [beam_search(s["model"], ids, mask, s["trie"], B) for ids, mask in s["batches"]]


def _reference(s):
    return [reference_beam_search(s["model"], ids, mask, s["trie"], B) for ids, mask in s["batches"]]


def test_ours(benchmark, setup):
    benchmark.group = "constrained beam search, B=20"
    benchmark.extra_info.update(model=setup["desc"], prompts=N_PROMPTS)
    benchmark.pedantic(_ours, args=(setup,), rounds=3, iterations=1, warmup_rounds=1)


def test_hf_reference(benchmark, setup):
    benchmark.group = "constrained beam search, B=20"
    benchmark.extra_info.update(model=setup["desc"], prompts=N_PROMPTS)
    benchmark.pedantic(_reference, args=(setup,), rounds=1, iterations=1)


def test_speedup(setup):
    """Identical ranked SIDs, and the throughput ratio (best of 2 timed runs each, after a warm-up)."""
    _ours(setup)
    times = {}
    for name, fn in (("ours", _ours), ("hf_reference", _reference)):
        best, out = float("inf"), None
        for _ in range(2):
            t = time.perf_counter()
            out = fn(setup)
            best = min(best, time.perf_counter() - t)
        times[name], setup[name] = best, out
    for a, b in zip(setup["ours"], setup["hf_reference"]):
        assert torch.equal(a.sid_ids, b.sid_ids)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-3)
    ratio = times["hf_reference"] / times["ours"]
    report = {
        "model": setup["desc"], "beams": B, "prompts": N_PROMPTS, "batch": BATCH,
        "prompt_tokens_mean": round(setup["prompt_tokens"], 1), "torch_threads": torch.get_num_threads(),
        "ours_s": round(times["ours"], 3), "hf_reference_s": round(times["hf_reference"], 3),
        "ours_rows_per_s": round(N_PROMPTS / times["ours"], 2),
        "hf_reference_rows_per_s": round(N_PROMPTS / times["hf_reference"], 2),
        "ratio": round(ratio, 2), "identical_ranked_sids": True,
        "command": " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ)
                            if k.startswith("TSREC_BENCH") or k == "OMP_NUM_THREADS")
                   + " python -m pytest -q benchmarks/bench_decoding.py --benchmark-enable -s",
    }
    print("\n" + json.dumps(report, indent=1))
    if os.environ.get("TSREC_BENCH_OUT"):
        out = Path(os.environ["TSREC_BENCH_OUT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
