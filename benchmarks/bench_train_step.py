"""Training throughput of one LoRA step on the real converted backbone (CPU, fp32).

keep_layers 30 (all) vs 8, seq 128 x batch 8, loss with vocabulary logits only at label positions vs the
full LM head. Tokens/s counts every input token (batch * seq) per optimizer step.
Run: flock /tmp/tsrec-cpu.lock python -m pytest benchmarks/bench_train_step.py --benchmark-enable
Skips when the converted backbone (``tsrec backbone``) is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BACKBONE = Path(os.environ.get("TSREC_BACKBONE", REPO / "artifacts" / "backbone" / "smollm2-135m-instruct"))
BATCH, SEQ, LABELS = 8, 128, 16  # the last LABELS tokens of each row are the response (12.5% of positions)
IGNORE = -100

pytestmark = pytest.mark.skipif(not (BACKBONE / "config.json").is_file(),
                                reason=f"converted backbone not found at {BACKBONE} (run `tsrec backbone`)")

_MODELS: dict[int, tuple] = {}


def _setup(keep_layers: int):
    """LoRA-wrapped backbone with the 3 x 256 SID tokens added (as in training), a batch and an optimizer."""
    if keep_layers not in _MODELS:
        from tsrec.lm.llm import LoraParams, add_sid_tokens, load_backbone, prepare_for_finetune

        torch.manual_seed(0)
        model, tok = load_backbone(BACKBONE, keep_layers=keep_layers)
        new = add_sid_tokens(model, tok, [f"<{lv}_{c}>" for lv in "abc" for c in range(256)])
        model = prepare_for_finetune(model, "lora", LoraParams(), new)
        model.train()
        ids = torch.randint(0, len(tok), (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
        labels = torch.full_like(ids, IGNORE)
        labels[:, -LABELS:] = ids[:, -LABELS:]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        _MODELS[keep_layers] = (model, ids, labels, opt)
    return _MODELS[keep_layers]


def _loss(model, ids, labels, head: str):
    if head == "full":
        return model(input_ids=ids, labels=labels, use_cache=False).loss
    from tsrec.model.sft import label_position_loss

    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "weight": torch.ones(ids.shape[0])}
    total, count = label_position_loss(model, model.get_output_embeddings(), batch)
    return total / count


@pytest.mark.parametrize("head", ["label", "full"])
@pytest.mark.parametrize("keep_layers", [30, 8])
def test_lora_train_step(benchmark, keep_layers, head):
    model, ids, labels, opt = _setup(keep_layers)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, ids, labels, head)
        loss.backward()
        opt.step()
        return loss.item()

    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(torch.tensor(loss))
    if benchmark.stats is not None:  # None with --benchmark-disable (the default in `make test`)
        # the 2 cores are shared: the fastest round is the least disturbed one, the median the typical
        best, median = benchmark.stats.stats.min, benchmark.stats.stats.median
        benchmark.extra_info.update(keep_layers=keep_layers, head=head, batch=BATCH, seq=SEQ,
                                    label_tokens_per_row=LABELS, threads=torch.get_num_threads(),
                                    tokens_per_s_best=round(BATCH * SEQ / best, 1),
                                    tokens_per_s_median=round(BATCH * SEQ / median, 1))
        print(f"\nkeep_layers={keep_layers} head={head}: {best:.2f} s/step best, {median:.2f} median; "
              f"{BATCH * SEQ / best:.0f} tokens/s best, {BATCH * SEQ / median:.0f} median")
