"""fp32 vs bf16 autocast on the real backbone, side by side: train-step tokens/s, evaluate rows/s, and quality.

- train step: SmolLM2-135M (first 8 layers) + 768 SID tokens, full fine-tune, AdamW, real seqrec examples of
  Industrial train (batch 16), loss of the train stage (``tsrec.commands.train.label_position_loss``);
- evaluate: the evaluate stage's constrained beam search (B=20, batch 8) on 16 real valid prompts;
- quality: the same N steps from the same init and batches in each precision, then valid loss on 128 valid
  rows and HR@10 on 64 valid rows (fixed seeded subsamples).
bf16 is *emulated* (slow) where the CPU lacks avx512_bf16/amx_bf16; each result records whether it was native.
Run: flock /tmp/tsrec-cpu.lock python -m pytest -q -s benchmarks/bench_precision.py --benchmark-enable \
     --benchmark-json=results/benchmarks/precision.json
Skips without the converted backbone (`tsrec backbone`) and the Industrial data (`tsrec data`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from tsrec.core.precision import autocast, cpu_flags, native_bf16

REPO = Path(__file__).resolve().parents[1]
BACKBONE = Path(os.environ.get("TSREC_BACKBONE", REPO / "artifacts" / "backbone" / "smollm2-135m-instruct"))
DATA = REPO / "data" / "Industrial_and_Scientific"
KEEP_LAYERS, BATCH, QUALITY_STEPS = 8, 16, int(os.environ.get("TSREC_BENCH_QUALITY_STEPS", "30"))
EMULATED_ROUNDS = 2  # emulated bf16 runs ~10-50x slower: fewer rounds

pytestmark = pytest.mark.skipif(not (BACKBONE / "config.json").is_file() or not (DATA / "sid_index.json").is_file(),
                                reason="needs the converted backbone and data/Industrial_and_Scientific")
PRECISIONS = ["fp32", "bf16"]


def _setup():
    """(model state_dict at init, tokenizer, sids, train batches, valid examples, valid rows) built once."""
    from tsrec.data.datasets import load_index
    from tsrec.lm.llm import add_sid_tokens, load_backbone
    from tsrec.model.sft import Collator
    from tsrec.data.sids import index_tokens, sid_str
    from tsrec.model.tasks import seqrec_examples

    index = load_index(DATA / "sid_index.json")
    torch.manual_seed(0)
    model, tok = load_backbone(BACKBONE, keep_layers=KEEP_LAYERS)
    add_sid_tokens(model, tok, index_tokens(index))
    sids = {i: sid_str(s) for i, s in index.items()}
    train = seqrec_examples(DATA, "train", sids, tok, 256, BATCH * QUALITY_STEPS, 0)
    random.Random(0).shuffle(train)
    collate = Collator(tok.pad_token_id)
    batches = [collate(train[i:i + BATCH]) for i in range(0, len(train), BATCH)]
    valid = seqrec_examples(DATA, "valid", sids, tok, 256, 128, 0)
    return {k: v.clone() for k, v in model.state_dict().items()}, model, tok, index, batches, valid, collate


_CACHE: dict = {}


def state():
    if not _CACHE:
        _CACHE["s"] = _setup()
    return _CACHE["s"]


def fresh_model():
    init, model, *_ = state()
    model.load_state_dict(init)
    model.train()
    return model


def train_step(model, opt, batch, precision):
    from tsrec.model.sft import label_position_loss

    opt.zero_grad(set_to_none=True)
    with autocast(precision):
        total, count = label_position_loss(model, model.get_output_embeddings(), batch)
    loss = total / count
    loss.backward()
    opt.step()
    return float(loss)


def record(benchmark, precision, units: float, unit: str, **extra):
    if benchmark.stats is None:  # --benchmark-disable (the default in `make test`)
        return
    best, median = benchmark.stats.stats.min, benchmark.stats.stats.median
    benchmark.extra_info.update(precision=precision, native_bf16=native_bf16(), threads=torch.get_num_threads(),
                                cpu_bf16_flags=sorted(f for f in cpu_flags() if "bf16" in f),
                                **{f"{unit}_best": round(units / best, 2), f"{unit}_median": round(units / median, 2)},
                                **extra)
    print(f"\n{precision}: {units / best:.1f} {unit} best, {units / median:.1f} median (native bf16: {native_bf16()})")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_train_step(benchmark, precision):
    *_, batches, _valid, _c = state()
    model = fresh_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = batches[0]
    rounds = 5 if precision == "fp32" or native_bf16() else EMULATED_ROUNDS
    loss = benchmark.pedantic(lambda: train_step(model, opt, batch, precision), rounds=rounds, warmup_rounds=1,
                              iterations=1)
    assert loss == loss  # finite: NaN != NaN
    record(benchmark, precision, int(batch["attention_mask"].sum()), "tokens_per_s", keep_layers=KEEP_LAYERS,
           batch=BATCH, full_finetune=True, optimizer="AdamW")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_evaluate_rows(benchmark, precision):
    from tsrec.data.datasets import load_split
    from tsrec.lm.decoding import SidTrie
    from tsrec.model.scoring import evaluate_rows
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    _init, _m, tok, index, *_ = state()
    model = fresh_model().eval()
    trie = SidTrie.from_index(index, tok)
    rows = load_split(DATA, "valid").iloc[:16]

    def run():
        with torch.inference_mode():
            return evaluate_rows(model, tok, trie, index, rows, seqrec_prompt, encode_prompt, beams=20,
                                 batch_size=8, desc="bench", precision=precision)[1]

    rounds = 3 if precision == "fp32" or native_bf16() else 1
    summary = benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    assert summary["invalid_outputs"] == 0
    record(benchmark, precision, len(rows), "rows_per_s", beams=20, batch_size=8)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quality_after_fixed_steps(benchmark, precision):
    """Same init, same batches, QUALITY_STEPS steps; valid loss (128 rows) and HR@10 (64 rows) per precision."""
    if precision == "bf16" and not native_bf16():
        pytest.skip("bf16 is emulated on this CPU (no avx512_bf16/amx_bf16): see test_train_step for its cost")
    from tsrec.data.datasets import load_split
    from tsrec.lm.decoding import SidTrie
    from tsrec.model.scoring import evaluate_rows
    from tsrec.model.sft import label_position_loss
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    _init, _m, tok, index, batches, valid, collate = state()

    def run():
        torch.manual_seed(0)
        model = fresh_model()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        for b in batches[:QUALITY_STEPS]:
            train_step(model, opt, b, precision)
        model.eval()
        with torch.inference_mode(), autocast(precision):
            tot = cnt = 0.0
            for i in range(0, len(valid), 32):
                t, c = label_position_loss(model, model.get_output_embeddings(), collate(valid[i:i + 32]))
                tot, cnt = tot + float(t), cnt + float(c)
            rows = load_split(DATA, "valid").sample(64, random_state=0)
            summary = evaluate_rows(model, tok, SidTrie.from_index(index, tok), index, rows, seqrec_prompt,
                                    encode_prompt, beams=20, batch_size=8, desc="quality", precision=precision)[1]
        return tot / cnt, summary["metrics"]["HR@10"]

    valid_loss, hr10 = benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
    assert valid_loss == valid_loss
    benchmark.extra_info.update(precision=precision, steps=QUALITY_STEPS, valid_loss=round(valid_loss, 4),
                                valid_hr10_64rows=hr10, native_bf16=native_bf16())
    print(f"\n{precision}: {QUALITY_STEPS} steps -> valid loss {valid_loss:.4f}, HR@10 (64 valid rows) {hr10:.4f}")
