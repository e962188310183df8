"""The `paper` profile's train step on one GPU, fp32 vs bf16 autocast side by side: tokens/s and peak memory.

The paper's backbone is Qwen2.5-1.5B; its weights are not reachable offline, so the model here is that
architecture (the public config's sizes) with random weights: the same FLOPs and memory per step. The step
is the train stage's (AdamW over fp32 master weights, ``tsrec.model.sft.label_position_loss``), on the profile's
micro batch (16) of random token rows as long as its mean example (112 tokens per the committed
``results/profiles/dryrun/paper_tsrec.md``), the last 30 % of each row as labels.
Run on a GPU machine: python -m pytest -q -s benchmarks/bench_gpu_paper_step.py --benchmark-enable \
    --benchmark-json=results/benchmarks/gpu_paper_step.json
Skips without CUDA. The planned tokens of the paper profile (dry run) / tokens/s = hours per GPU.
"""

from __future__ import annotations

import pytest
import torch

from tsrec.core.precision import autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH, SEQ, LABEL_FRACTION = 16, 112, 0.3
PLANNED_TOKENS = 33_098_110  # paper_tsrec dry run: tokens planned (10 epochs, non-padding)
QWEN25_15B = dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32_768,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU (the CPU init of 1.5B weights takes minutes)
        return Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B)).float()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_paper_train_step(benchmark, model, precision):
    from tsrec.model.sft import label_position_loss
    from tsrec.model.tasks import IGNORE

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, QWEN25_15B["vocab_size"], (BATCH, SEQ), generator=g).cuda()
    labels = ids.clone()
    labels[:, : int(SEQ * (1 - LABEL_FRACTION))] = IGNORE
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
              "weight": torch.ones(BATCH, device="cuda")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    head = model.get_output_embeddings()

    def step():
        with autocast(precision, "cuda"):
            total, n = label_position_loss(model, head, inputs)
            loss = total / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return float(loss)

    for _ in range(2):
        step()  # warm-up (allocations, kernels)
    torch.cuda.reset_peak_memory_stats()
    loss = benchmark.pedantic(step, rounds=10, iterations=1)
    assert torch.isfinite(torch.tensor(loss))
    per_step = benchmark.stats.stats.median
    tok_s = BATCH * SEQ / per_step
    benchmark.extra_info.update({
        "gpu": torch.cuda.get_device_name(), "precision": precision, "batch": BATCH, "seq": SEQ,
        "tokens_per_s": round(tok_s), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "paper_hours_one_gpu": round(PLANNED_TOKENS / tok_s / 3600, 2),
    })
    print(f"\n{precision}: {tok_s:,.0f} tok/s, peak {benchmark.extra_info['peak_mem_gib']} GiB, "
          f"paper profile {benchmark.extra_info['paper_hours_one_gpu']} h on one GPU")
