"""Scoring of the LLM baselines: rank the test (``evaluate.split``) rows with BIGRec (generation + grounding) or
the title trie (D3, S-DPO) and write the evaluate stage's files (``tsrec.model.scoring.commit_outputs``) under
the model's name, so ``tsrec paired`` and ``tsrec report`` read them like any run. An item ranking becomes a SID
ranking by keeping each SID's first occurrence (``tsrec.baselines.trainer.Granularity``)."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from tsrec.baselines.llm_config import AssistantConfig, LLMJob
from tsrec.baselines.llm_decoding import (assistant_probs, clean_title, constrained_titles, generate_texts, ground,
                                          last_hidden, title_trie)
from tsrec.baselines.llm_titles import TitleText, load_titles
from tsrec.baselines.trainer import Granularity, SeqData
from tsrec.core import pinning
from tsrec.core.io import sha256_file
from tsrec.core.precision import resolve_device
from tsrec.data.datasets import load_split
from tsrec.data.layout import eval_dir, results_dir, split_suffix
from tsrec.eval.metrics import both_levels, ranks
from tsrec.model.runs import load_trained
from tsrec.model.scoring import EvaluateConfig, commit_outputs, select_rows
from tsrec.model.tasks import PromptsConfig, encode_prompt

DECODING = {"bigrec": "unconstrained beam search -> top text -> L2 grounding over item titles",
            "d3": "title-trie beam search, length_penalty 0, text-free assistant",
            "sdpo": "title-trie beam search, length_penalty 0"}


@dataclasses.dataclass
class ScoreSettings:
    """What scoring one LLM baseline takes besides its ``LLMJob``, resolved by the command."""
    run: Path                           # the trained run: runs/title_sft/seed<N> or runs/sdpo/seed<N>
    prompts: PromptsConfig              # that run's prompt text (``tsrec.model.scoring.run_prompts``)
    evaluate: EvaluateConfig
    index_file: Path                    # the SID index in use (SID-level metrics)
    subsample_seed: int                 # the top-level seed: the same rows as every run
    results: str = "results"
    artifacts: str = "artifacts"
    command: str = ""
    assistant: AssistantConfig | None = None  # D3's SASRec assistant (model d3 only)


def rank_bigrec(job: LLMJob, model, tokenizer, tt: TitleText, prompts: list[list[int]], n: int,
                device: str) -> tuple[list[list[int]], dict, float]:
    """BIGRec: the top beam's text per prompt, grounded to the ``n`` nearest item titles (L2 between last-token
    embeddings of the base or the tuned model); (ranked items, extra record keys, wall seconds)."""
    from tsrec.lm.llm import load_backbone

    t0 = time.perf_counter()
    g = job.cfg.grounding
    texts = generate_texts(model, tokenizer, prompts, g.gen_beams, g.max_new_tokens, job.cfg.batch_size)
    if g.encoder == "base":
        encoder, enc_tok = load_backbone(job.backbone.path, job.backbone.keep_layers)
        encoder.to(device).eval()
    else:
        encoder, enc_tok = model, tokenizer
    item_ids = sorted(tt.titles)
    item_emb = last_hidden(encoder, enc_tok, [clean_title(tt.title(i)) for i in item_ids], g.batch_size)
    pred_emb = last_hidden(encoder, enc_tok, [clean_title(t) for t in texts], g.batch_size)
    top = ground(pred_emb, item_emb, min(len(item_ids), n)).tolist()
    catalogue = {clean_title(tt.title(i)) for i in item_ids}
    extra = {"generated": texts, "exact_title_match": sum(clean_title(t) in catalogue for t in texts)}
    return [[item_ids[c] for c in row] for row in top], extra, time.perf_counter() - t0


def rank_titles(job: LLMJob, model_name: str, model, tokenizer, tt: TitleText, prompts: list[list[int]],
                histories: list[list[int]], k: int, s: ScoreSettings):
    """D3 / S-DPO: title-trie beam search (D3: with its assistant); (ranked items, beam scores, extra record
    keys, decoding wall seconds: the assistant's training is recorded apart)."""
    trie = title_trie(tt, tokenizer)
    d3 = job.cfg.d3 if model_name == "d3" else None
    leaf_probs, assistant = None, None
    if d3 is not None and d3.assistant == "sasrec" and d3.guidance_scale < 1.0:
        if s.assistant is None:
            raise ValueError("D3's assistant needs ScoreSettings.assistant (the baselines section's SASRec settings)")
        leaf_probs, assistant = assistant_probs(job, s.assistant, s.index_file, histories, trie)
    t0 = time.perf_counter()
    leaves, scores = constrained_titles(model, tokenizer, trie, prompts, k, job.cfg.batch_size, leaf_probs,
                                        d3.guidance_scale if d3 else 1.0, d3.temperature if d3 else 1.0)
    ranked = [[i for leaf in row for i in trie.items[leaf]] for row in leaves]
    return ranked, scores, {"assistant": assistant}, time.perf_counter() - t0


def rank_table(rows: pd.DataFrame, ranked_items: list[list[int]], gran: Granularity,
               k: int) -> tuple[pd.DataFrame, list[int | None], list[int | None], list[list]]:
    """(per-row ranks frame, SID ranks, item ranks, SID lists) of the top-``k`` items / SIDs of every row."""
    targets = [int(t) for t in rows["target"]]
    item_lists = [lst[:k] for lst in ranked_items]
    sid_lists = [gran.to_sids(lst, k) for lst in ranked_items]
    item_ranks = ranks(item_lists, targets)
    sid_ranks = ranks(sid_lists, [gran.item_sid[t] for t in targets])
    frame = pd.DataFrame({"row": rows.index.to_numpy(), "user_id": rows["user_id"].to_numpy(),
                          "target": targets, "target_sid": ["".join(gran.item_sid[t]) for t in targets],
                          "rank": sid_ranks, "item_rank": item_ranks, "ranked_items": item_lists,
                          "ranked_sids": [["".join(x) for x in lst] for lst in sid_lists]})
    return frame, sid_ranks, item_ranks, sid_lists


def score(job: LLMJob, model_name: str, s: ScoreSettings) -> dict:
    """Rank the test (``evaluate.split``) rows with one LLM baseline; write metrics, run record and ranks."""
    lcfg, ecfg = job.cfg, s.evaluate
    device = resolve_device(ecfg.device)
    if ecfg.threads:
        torch.set_num_threads(ecfg.threads)
    model, tokenizer, meta = load_trained(s.run, device=device)
    tt = TitleText(load_titles(job.data_dir), lcfg, s.prompts)
    gran = SeqData(job.data_dir, index_file=s.index_file).gran
    split_df = load_split(job.data_dir, ecfg.split)
    rows = split_df.iloc[select_rows(len(split_df), ecfg.subsample, s.subsample_seed)]
    histories = [[int(h) for h in hist] for hist in rows["history"]]
    prompts = [encode_prompt(tokenizer, tt.render(h)[0])[-(lcfg.max_len - 1):] for h in histories]
    k = ecfg.beams
    if model_name == "bigrec":
        ranked_items, extra, wall = rank_bigrec(job, model, tokenizer, tt, prompts, k + gran.slack, device)
        scores_col = None
    else:
        ranked_items, scores_col, extra, wall = rank_titles(job, model_name, model, tokenizer, tt, prompts,
                                                            histories, k, s)
    ranks_df, sid_ranks, item_ranks, sid_lists = rank_table(rows, ranked_items, gran, k)
    if scores_col is not None:
        ranks_df["scores"] = scores_col
    if model_name == "bigrec":
        ranks_df["generated"] = extra["generated"]
    numbers = {"seed": int(job.seed), **both_levels(sid_ranks, item_ranks), "n_rows": len(rows),
               "n_rows_split": len(split_df), "rows_with_fewer_than_B_sids": sum(len(x) < k for x in sid_lists),
               "wall_time_s": round(wall, 2), "rows_per_s": round(len(rows) / wall, 3) if wall > 0 else None}
    record = {"dataset": job.ds, "variant": model_name, "seed": int(job.seed), "split": ecfg.split,
              "subsample": None if len(rows) == len(split_df) else {"n": len(rows), "seed": s.subsample_seed},
              "beams": k, "llm_baselines": dataclasses.asdict(lcfg),
              "model": {"run": str(s.run), "meta": meta},
              **({"exact_title_match": extra["exact_title_match"]} if model_name == "bigrec" else {}),
              **({"assistant": extra["assistant"]} if extra.get("assistant") else {}),
              "index": {"path": str(s.index_file), "sha256": sha256_file(s.index_file)},
              "decoding": DECODING[model_name],
              "device": device, "host": platform.machine(), "torch_threads": torch.get_num_threads(),
              "machine": pinning.record(job.repro, file=job.params_file), "command": s.command}
    suffix = split_suffix(ecfg.split)
    metrics_file = results_dir(s.results, job.ds, model_name, job.seed) / f"metrics{suffix}.json"
    commit_outputs(metrics_file, numbers, record, eval_dir(s.artifacts, job.ds, model_name, job.seed),
                   f"ranks{suffix}.parquet", ranks_df)
    return numbers
