"""The text-based LLM recommenders of the paper's table, BIGRec, D3 and S-DPO, on this harness's
data, backbone, budget rule, seeds and metrics (stages llm-sft and llm-baseline, ``tsrec.commands.llm_baseline``;
docs/llm_baselines.md: the deviations from each official code). This module: the title texts and the shared
title SFT; S-DPO in ``tsrec.baselines.sdpo``, the decoders in ``tsrec.baselines.llm_decoding``, scoring in
``tsrec.baselines.llm_scoring``, the section in ``tsrec.baselines.llm_config``.

All three share one SFT model per (dataset, seed): the backbone fine-tuned to write the next item's TITLE from
the user's history of titles (``train_title_sft``, run ``<train.out>/<DS>/runs/title_sft/seed<N>/``), on the
``train`` section's budget and schedule (``tsrec.model.sft.training_arguments``: whatever equal-budget rule that
section sets applies here too; ``llm_baselines.train`` may override single keys, recorded in the run's meta).
Prompt text: ``llm_baselines.prompt`` (fields ``{titles}`` / ``{title}``) inside the run's ``tasks.prompts``
header / wrap / eos_suffix, tokenized by ``tsrec.model.tasks.encode_pair`` (the loss covers the response only).

  bigrec  BIGRec (Bao et al. 2023, github SAI990323/BIGRec ``inference.py`` + ``data/*/evaluate.py``): beam
          search (``grounding.gen_beams`` beams, unconstrained) writes one title; the text is grounded to real
          items by the L2 distance between its embedding and every item title's embedding, top-K by distance.
          Embedding = the last layer's hidden state at the last token of the text alone, from the BASE backbone
          as the official code does (``grounding.encoder: tuned`` uses the SFT model instead).
  d3      D3 (Bao et al. 2024, github SAI990323/DecodingMatters ``code/evaluate.py``, ``LogitProcesser.py``):
          the same SFT model decoded by beam search constrained to real item titles (a variable-length
          ``tsrec.lm.decoding.SidTrie`` decoded by ``reference_beam_search``), length_penalty 0 (no length
          normalisation: "ghost tokens", whose probability is ~1 once a prefix fixes the title, then add ~0 to a
          beam's score instead of inflating its average), and the text-free assistant (``AssistantProcessor``):
          a SASRec of this harness (``tsrec.baselines``) whose item probabilities, summed under each allowed
          next token and renormalised over the allowed tokens, mix into every step's log-probs:
          ``gs * log p_LLM + (1 - gs) * log p_assistant`` (``d3.guidance_scale`` = gs); a step with one
          allowed token (a ghost token) gets no assistant term (log 1 = 0), as in the official code.
  sdpo    S-DPO (Chen et al. 2024, github chenyuxin1999/S-DPO ``trainer/softmax_dpo_trainer.py``): from the SFT
          model, the softmax-DPO loss with ``sdpo.neg_num`` uniformly sampled negative items per prompt and a
          frozen reference model (the SFT model), ``sdpo_loss``; scored like D3 without the assistant
          (title-constrained beam search).

TRL is not used: why, in ``tsrec.baselines.sdpo``.

Scoring writes the evaluate stage's files (``tsrec.model.scoring.commit_outputs``) under the model's name, so
``tsrec paired --variant tsrec --other bigrec`` and ``tsrec report`` read them like any run:
``results/<DS>/<model>/seed<N>/{metrics,run}.json`` (SID-level ``HR@K``/``NDCG@K`` at the top level, item-level
under ``item/``) and ``ranks.parquet`` (SID-level rank per row); the ranked items and texts per row in
``artifacts/<DS>/eval/<model>/seed<N>/ranks.parquet``. An item ranking becomes a SID ranking by keeping each
SID's first occurrence (``tsrec.baselines.trainer.Granularity``), as for the ID baselines.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from tsrec.baselines.llm_config import LLMBaselinesConfig, LLMJob
from tsrec.baselines.names import SFT_RUN
from tsrec.core import pinning
from tsrec.core.errors import TsrecError
from tsrec.core.io import claim_checkpoints, sha256_file, sha256_json
from tsrec.data.datasets import load_items, load_split
from tsrec.model.runs import META, TrainConfig, backbone_id, save_final
from tsrec.model.tasks import PromptsConfig, encode_pair

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- titles -> examples
@dataclasses.dataclass
class TitleText:
    """Item titles and the prompt text of the title task (the run's ``tasks.prompts`` around it)."""
    titles: dict[int, str]
    cfg: LLMBaselinesConfig
    prompts: PromptsConfig

    def title(self, item: int) -> str:
        words = self.cfg.title_words
        t = " ".join(str(self.titles[item]).split())
        return " ".join(t.split()[:words]) if words else t

    def render(self, history: list[int], target: int | None = None) -> tuple[list[str], str]:
        hist = self.prompts.title_sep.join(self.title(i) for i in history[-self.cfg.title_history:])
        return self.prompts.render(self.cfg.prompt, titles=hist, title="" if target is None else self.title(target))

    def response(self, item: int) -> str:
        """The training response of ``item`` (what the model writes; the title trie's sequences)."""
        return self.prompts.render(self.cfg.prompt, titles="", title=self.title(item))[1]


def load_titles(data_dir: Path) -> dict[int, str]:
    """item id -> title of the dataset's items.parquet."""
    items = load_items(data_dir)
    return dict(zip(items["item_id"].astype(int), items["title"].astype(str)))


def title_examples(tt: TitleText, rows: pd.DataFrame, tokenizer) -> list[dict]:
    out = []
    for hist, target in zip(rows["history"], rows["target"]):
        prompt, response = tt.render([int(h) for h in hist], int(target))
        ids, labels = encode_pair(tokenizer, prompt, response, tt.cfg.max_len)
        out.append({"input_ids": ids, "labels": labels, "weight": 1.0})
    return out


def subsample_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A fixed seeded subsample of ``n`` rows, in row order (all rows where ``n`` is None, <= 0 or >= len)."""
    if n is None or n <= 0 or n >= len(df):
        return df
    return df.iloc[sorted(random.Random(seed).sample(range(len(df)), n))]


def check_dataset(data_dir: Path) -> None:
    if not (data_dir / "items.parquet").is_file():
        raise TsrecError("dataset not found (run `tsrec data`, or check --dataset and data.out)", file=data_dir)



def read_meta(run: Path) -> dict:
    """The meta of ``<run>/final`` ({} where there is none yet: loading the run then names what is missing)."""
    path = Path(run) / "final" / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ---------------------------------------------------------------- step 1: the title SFT (shared)
def title_sft_identity(job: LLMJob, cfg: TrainConfig, prompts: PromptsConfig) -> tuple[dict, dict, str]:
    """(recorded params, input sha256s, fingerprint) of a title SFT run; the train matrix lists (datasets,
    variants, seeds, extra) and the other models' keys are left out: planning more runs retrains nothing."""
    budget = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("datasets", "variants", "seeds", "extra")}
    recorded = {"train": budget, "llm_baselines": {k: v for k, v in dataclasses.asdict(job.cfg).items()
                                                   if k not in ("models", "datasets", "seeds", "sdpo", "d3", "grounding")},
                "tasks": {"prompts": dataclasses.asdict(prompts)},
                "backbone": dataclasses.asdict(job.backbone)}
    inputs = {n: sha256_file(job.data_dir / f"{n}.parquet") for n in ("items", "train", "valid")}
    fingerprint = sha256_json({"params": recorded, "inputs": inputs, "backbone_id": backbone_id(job.backbone.path),
                               "dataset": job.ds, "seed": int(job.seed)})
    return recorded, inputs, fingerprint


def train_title_sft(job: LLMJob, cfg: TrainConfig, prompts: PromptsConfig, out: Path, *, train: bool = True) -> dict:
    """Fine-tune the backbone on history titles -> next title into ``out`` (``<run>/final`` + meta), on the
    train section's budget ``cfg`` with the ``tasks.prompts`` text ``prompts``. Resumes checkpoints of the same
    configuration; a finished run of the same configuration is kept (returns its meta).
    ``train=False``: only check that such a run exists (an error naming the command that makes it)."""
    if cfg.select == "valid_ndcg10":  # a SID ranking: the title model is selected (and stopped) on valid loss
        cfg = dataclasses.replace(cfg, select="valid_loss", rank_rows=0)
    check_dataset(job.data_dir)
    recorded, inputs, fingerprint = title_sft_identity(job, cfg, prompts)
    meta_file = out / "final" / META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fingerprint:
            log.info("%s: title SFT already trained with this configuration, kept", out)
            return meta
    if not train:
        raise TsrecError(f"no title SFT run of this configuration (run `tsrec llm-baseline --dataset {job.ds} --seed "
                         f"{job.seed} --sft-only`, DVC stage llm-sft)", file=meta_file)
    trainer, tokenizer, info = fit_title_sft(job, cfg, prompts, out, fingerprint)
    meta = {"dataset": job.ds, "variant": SFT_RUN, "seed": int(job.seed), "fingerprint": fingerprint,
            "backbone": str(job.backbone.path), "backbone_id": backbone_id(job.backbone.path), "params": recorded,
            "inputs_sha256": inputs, "train": info}
    save_final(trainer.model, tokenizer, meta, out / "final")
    if not cfg.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return meta


def fit_title_sft(job: LLMJob, cfg: TrainConfig, prompts: PromptsConfig, out: Path, fingerprint: str):
    """The title SFT's training (HF Trainer of ``tsrec.model.sft``, resumed from ``<out>/checkpoints`` of the
    same ``fingerprint``); returns (trainer, tokenizer, the meta's ``train`` entry)."""
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from tsrec.core.precision import resolve as resolve_precision
    from tsrec.core.precision import weight_dtype
    from tsrec.lm import llm as bb
    from tsrec.model.sft import (Collator, Examples, csv_logger, drop_incomplete_checkpoints, trainer_class,
                                 training_arguments)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(int(job.seed))
    model, tokenizer = bb.load_backbone(job.backbone.path, job.backbone.keep_layers)
    model = bb.prepare_for_finetune(model, job.backbone.finetune, job.backbone.lora)
    model = model.to(weight_dtype(precision))  # bf16_pure: bf16 weights and optimizer state, as tsrec train
    tt = TitleText(load_titles(job.data_dir), job.cfg, prompts)
    train_rows = title_examples(tt, load_split(job.data_dir, "train"), tokenizer)
    valid_rows = title_examples(tt, subsample_rows(load_split(job.data_dir, "valid"), cfg.valid_rows, int(job.seed)),
                                tokenizer)
    ckpt_dir = out / "checkpoints"
    claim_checkpoints(ckpt_dir, fingerprint, also=(out / "plots",))
    drop_incomplete_checkpoints(ckpt_dir)
    resume = get_last_checkpoint(str(ckpt_dir))
    args = training_arguments(cfg, ckpt_dir, int(job.seed), precision, device, job.params_file)
    csv_log = csv_logger(out / "plots")
    trainer = trainer_class()(
        model=model, args=args, train_dataset=Examples(train_rows), eval_dataset=Examples(valid_rows),
        data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=[*([EarlyStoppingCallback(early_stopping_patience=cfg.patience,
                                            early_stopping_threshold=cfg.min_delta)] if cfg.early_stopping else []),
                   csv_log])
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    tokens = int(trainer.state.num_input_tokens_seen or 0) - csv_log.tokens_at_start
    info = {"steps": trainer.state.global_step, "max_steps": trainer.state.max_steps,
            "stopped_early": trainer.state.global_step < trainer.state.max_steps,
            "best_metric": trainer.state.best_metric, "select": cfg.select,
            "examples": len(train_rows),
            "precision": precision, "train_loss": result.training_loss, "wall_s": round(wall, 1),
            "tokens_seen": tokens, "tokens_per_s": round(tokens / wall, 1) if wall else None,
            "machine": pinning.record(job.repro, file=job.params_file)}
    return trainer, tokenizer, info
