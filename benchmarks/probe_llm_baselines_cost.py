"""CPU cost inputs of the LLM baselines (docs/llm_baselines.md "Cost") on real data: token counts of the title
SFT examples, and the CPU seconds (time.process_time, 1 torch thread: independent of the box's load) of one
unit of each kind of work, with the backbone's first ``keep_layers`` layers (untrained: the decoding lengths
are bounded by the titles, so the per-row cost is of the right size, not exact).

    tsrec data --dataset Industrial_and_Scientific && tsrec backbone
    python benchmarks/probe_llm_baselines_cost.py [DATASET] [BACKBONE_FOLDER]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tsrec.baselines import llm_decoding, llm_titles, sdpo
from tsrec.baselines.llm_config import LLMBaselinesConfig
from tsrec.core.config import load_params, section
from tsrec.data.datasets import load_split
from tsrec.lm.llm import backbone_config, load_backbone
from tsrec.model.sft import Collator, label_position_loss
from tsrec.model.tasks import IGNORE, encode_prompt, tasks_config


def main(ds: str = "Industrial_and_Scientific", backbone: str | None = None) -> dict:
    torch.set_num_threads(1)
    cpu = time.process_time
    params = load_params("params.yaml")
    data = Path("data") / ds
    tt = llm_titles.TitleText(llm_titles.load_titles(data), section(params, "llm_baselines", LLMBaselinesConfig),
                              tasks_config(params).prompts)
    bcfg = backbone_config(params)
    model, tok = load_backbone(backbone or bcfg.path, bcfg.keep_layers)
    train = load_split(data, "train")
    ex = llm_titles.title_examples(tt, train, tok)
    out = {"dataset": ds, "items": len(tt.titles), "train_rows": len(train),
           "test_rows": len(load_split(data, "test")),
           "sft_tokens_mean": round(statistics.mean(len(e["input_ids"]) for e in ex), 1),
           "sft_label_tokens_mean": round(statistics.mean(sum(x != IGNORE for x in e["labels"]) for e in ex), 1),
           "title_tokens_mean": round(statistics.mean(
               len(tok(tt.response(i), add_special_tokens=False)["input_ids"]) for i in tt.titles), 1)}
    sample = train.sample(64, random_state=0)
    batch = Collator(tok.pad_token_id)(llm_titles.title_examples(tt, sample, tok)[:16])
    model.train()
    t = cpu()
    total, count = label_position_loss(model, model.get_output_embeddings(), batch)
    (total / count).backward()
    out["sft_step16_cpu_s"], out["sft_step16_tokens"] = round(cpu() - t, 2), int(batch["attention_mask"].sum())
    model.zero_grad()
    b = sdpo.SDPOCollator(tok.pad_token_id)(sdpo.sdpo_examples(tt, sample.head(4), tok, 3, 0))
    t = cpu()
    pol = sdpo.sequence_logps(model, b["input_ids"], b["attention_mask"], b["labels"]).view(-1, 4)
    with torch.no_grad():
        ref = sdpo.sequence_logps(model, b["input_ids"], b["attention_mask"], b["labels"]).view(-1, 4)
    sdpo.sdpo_loss(pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], 1.0).mean().backward()
    out["sdpo_micro4_cpu_s"] = round(cpu() - t, 2)
    model.zero_grad()
    model.eval()
    test = load_split(data, "test").head(2)
    prompts = [encode_prompt(tok, tt.render([int(h) for h in hist])[0])[-511:] for hist in test["history"]]
    trie = llm_decoding.title_trie(tt, tok)
    t = cpu()
    llm_decoding.constrained_titles(model, tok, trie, prompts, 20, 2)
    out["title_trie_decode_cpu_s_per_row"] = round((cpu() - t) / 2, 2)
    t = cpu()
    llm_decoding.constrained_titles(model, tok, trie, prompts, 20, 2, torch.rand(2, len(trie)).softmax(-1), 0.8)
    out["d3_decode_with_assistant_cpu_s_per_row"] = round((cpu() - t) / 2, 2)
    t = cpu()
    llm_decoding.generate_texts(model, tok, prompts, 4, 64, 2)
    out["bigrec_generate_cpu_s_per_row"] = round((cpu() - t) / 2, 2)
    ids = sorted(tt.titles)[:64]
    t = cpu()
    llm_decoding.last_hidden(model, tok, [llm_decoding.clean_title(tt.title(i)) for i in ids], 16)
    out["bigrec_embed_cpu_s_per_title"] = round((cpu() - t) / 64, 4)
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
