"""llm-baseline: the text-based LLM recommenders of the paper's table, BIGRec, D3 and S-DPO, on this harness's
data, backbone, budget rule, seeds and metrics (docs/llm_baselines.md: the deviations from each official code).

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

TRL is not used (it is not in this environment, and ``tsrec.commands.rl`` set the precedent): TRL's DPOTrainer takes
one rejected response per prompt, so S-DPO's multi-negative loss, batching and log-prob gathering would all
have to be rewritten anyway (the official code subclasses an old DPOTrainer and overrides exactly those). Kept
from the HF stack: ``transformers.Trainer`` (optimizer, schedule, accumulation, checkpoints) with
``compute_loss`` replaced; the reference model is a frozen copy loaded from the SFT run (what TRL's
``create_reference_model`` would give).

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
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F

from tsrec.core import pinning
from tsrec.core.config import deep_merge, global_seed, section
from tsrec.data.datasets import DataConfig, load_items, load_split
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import claim_checkpoints, sha256_file, sha256_json
from tsrec.model.tasks import IGNORE, PromptsConfig, PromptText, encode_pair, encode_prompt, tasks_config

log = logging.getLogger(__name__)

MODELS = ("bigrec", "d3", "sdpo")
SFT_RUN = "title_sft"  # the shared title-SFT run: <train.out>/<DS>/runs/title_sft/seed<N>
SDPO_RUN = "sdpo"      # S-DPO's own run, from the SFT one


# ---------------------------------------------------------------- params
@dataclasses.dataclass
class GroundingConfig:
    """BIGRec's step 2 (official: num_beams 4, max_new_tokens 128, the base LLM embeds both sides)."""
    encoder: Literal["base", "tuned"] = "base"
    gen_beams: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16   # texts per embedding forward pass

    def validate(self) -> None:
        if min(self.gen_beams, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("gen_beams, max_new_tokens and batch_size must be >= 1")


@dataclasses.dataclass
class D3Config:
    assistant: Literal["sasrec", "none"] = "sasrec"  # the text-free assistant (a harness ID model)
    guidance_scale: float = 0.8  # gs: gs * log p_LLM + (1 - gs) * log p_assistant; 1.0 = no assistant
    temperature: float = 1.0     # official TemperatureLogitsWarper (1.0 there)

    def validate(self) -> None:
        if not 0 < self.guidance_scale <= 1 or self.temperature <= 0:
            raise ValueError("guidance_scale must be in (0, 1], temperature > 0")


@dataclasses.dataclass
class SDPOConfig:
    """softmax_dpo.sh / softmax_dpo.py: neg_num 3, beta 1, lr 1e-5, 3 epochs, cosine, warmup ratio 0.05,
    4 x 8 accumulation x 4 GPUs per step."""
    neg_num: int = 3
    beta: float = 1.0
    lr: float = 1.0e-5
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 8
    schedule: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    train_prompts: int | None = 1024  # fixed seeded subsample of the train rows (None: all)
    logging_steps: int = 10

    def validate(self) -> None:
        if self.neg_num < 1 or self.beta <= 0 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("neg_num must be >= 1, beta and lr > 0, warmup_ratio in [0, 1)")
        if self.batch_size < 1 or self.grad_accum < 1 or (self.train_prompts is not None and self.train_prompts < 1):
            raise ValueError("batch_size, grad_accum and train_prompts must be >= 1")


def _prompt() -> PromptText:
    return PromptText(prompt="User history: {titles}\nNext item title:", response=' "{title}"')


@dataclasses.dataclass
class LLMBaselinesConfig:
    models: list[str] = dataclasses.field(default_factory=lambda: list(MODELS))
    # the DVC matrix (stages llm-sft, llm-baseline); the seeds: those of train.seeds, so the report pairs them
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific", "Office_Products"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42, 43, 44])
    title_words: int = 0       # titles cut to N words in prompts and responses (0 = whole titles, official)
    title_history: int = 10    # last N titles of the history (official: the whole history, <= 10 here)
    max_len: int = 512         # tokens per example; longer prompts are cut from the left
    batch_size: int = 4        # prompts per decoding batch
    prompt: PromptText = dataclasses.field(default_factory=_prompt)
    train: dict = dataclasses.field(default_factory=dict)  # overrides of the train section for the title SFT
    grounding: GroundingConfig = dataclasses.field(default_factory=GroundingConfig)
    d3: D3Config = dataclasses.field(default_factory=D3Config)
    sdpo: SDPOConfig = dataclasses.field(default_factory=SDPOConfig)

    def validate(self) -> None:
        bad = sorted(set(self.models) - set(MODELS))
        if bad:
            raise ValueError(f"unknown model(s) {bad}; known: {list(MODELS)}")
        if self.title_words < 0 or self.title_history < 1 or self.max_len < 16 or self.batch_size < 1:
            raise ValueError("title_words >= 0, title_history >= 1, max_len >= 16, batch_size >= 1")
        from tsrec.model.tasks import template_fields

        for where, text in (("prompt.prompt", self.prompt.prompt), ("prompt.response", self.prompt.response)):
            bad = template_fields(text) - {"titles", "title"}
            if bad:
                raise ValueError(f"{where}: unknown field(s) {sorted(bad)}; allowed ['title', 'titles']")
        if "{title}" not in self.prompt.response:
            raise ValueError("prompt.response must contain {title}")


def llm_config(params: dict) -> LLMBaselinesConfig:
    return section(params, "llm_baselines", LLMBaselinesConfig)


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


def title_text(params: dict, data_dir: Path) -> TitleText:
    items = load_items(data_dir)
    return TitleText(dict(zip(items["item_id"].astype(int), items["title"].astype(str))), llm_config(params),
                     tasks_config(params).prompts)


def title_examples(tt: TitleText, rows: pd.DataFrame, tokenizer) -> list[dict]:
    out = []
    for hist, target in zip(rows["history"], rows["target"]):
        prompt, response = tt.render([int(h) for h in hist], int(target))
        ids, labels = encode_pair(tokenizer, prompt, response, tt.cfg.max_len)
        out.append({"input_ids": ids, "labels": labels, "weight": 1.0})
    return out


def _subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n <= 0 or n >= len(df):
        return df
    return df.iloc[sorted(random.Random(seed).sample(range(len(df)), n))]


def _check_dataset(data_dir: Path) -> None:
    if not (data_dir / "items.parquet").is_file():
        raise TsrecError("dataset not found (run `tsrec data`, or check --dataset and data.out)", file=data_dir)


def sft_params(params: dict) -> dict:
    """params with ``llm_baselines.train`` merged over the ``train`` section (the title SFT's budget)."""
    over = llm_config(params).train
    return deep_merge(params, {"train": over}) if over else params


def run_folder(params: dict, ds: str, name: str, seed: int) -> Path:
    from tsrec.model.runs import run_dir

    return run_dir(params, ds, name, seed)


# ---------------------------------------------------------------- step 1: the title SFT (shared)
def train_title_sft(params: dict, ds: str, seed: int, *, train: bool = True) -> dict:
    """Fine-tune the backbone on history titles -> next title; ``<run>/final`` + meta. Resumes checkpoints of
    the same configuration; a finished run of the same configuration is kept (returns its meta).
    ``train=False``: only check that such a run exists (an error naming the command that makes it)."""
    from transformers import EarlyStoppingCallback, set_seed

    from tsrec.lm import llm as bb
    from tsrec.core.precision import resolve as resolve_precision
    from tsrec.core.precision import weight_dtype
    from tsrec.model.runs import META, TrainConfig, backbone_id, save_final
    from tsrec.model.sft import Collator, Examples, csv_logger, trainer_class, drop_incomplete_checkpoints, training_arguments

    vp = sft_params({**params, "seed": int(seed)})
    cfg = section(vp, "train", TrainConfig)
    if cfg.select == "valid_ndcg10":  # a SID ranking: the title model is selected (and stopped) on valid loss
        cfg = dataclasses.replace(cfg, select="valid_loss", rank_rows=0)
    lcfg = llm_config(params)
    bcfg = bb.backbone_config(params)
    data_dir = Path(section(params, "data", DataConfig).out) / ds
    _check_dataset(data_dir)
    out = run_folder(params, ds, SFT_RUN, seed)
    # the matrix lists (datasets, variants, seeds, extra) left out: planning more runs retrains nothing
    budget = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("datasets", "variants", "seeds", "extra")}
    recorded = {"train": budget, "llm_baselines": {k: v for k, v in dataclasses.asdict(lcfg).items()
                                                                    if k not in ("models", "datasets", "seeds", "sdpo", "d3", "grounding")},
                "tasks": {"prompts": dataclasses.asdict(tasks_config(params).prompts)},
                "backbone": dataclasses.asdict(bcfg)}
    inputs = {n: sha256_file(data_dir / f"{n}.parquet") for n in ("items", "train", "valid")}
    fingerprint = sha256_json({"params": recorded, "inputs": inputs, "backbone_id": backbone_id(bcfg.path),
                               "dataset": ds, "seed": int(seed)})
    meta_file = out / "final" / META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fingerprint:
            log.info("%s: title SFT already trained with this configuration, kept", out)
            return meta
    if not train:
        raise TsrecError(f"no title SFT run of this configuration (run `tsrec llm-baseline --dataset {ds} --seed "
                         f"{seed} --sft-only`, DVC stage llm-sft)", file=meta_file)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(int(seed))
    model, tokenizer = bb.load_backbone(bcfg.path, bcfg.keep_layers)
    model = bb.prepare_for_finetune(model, bcfg.finetune, bcfg.lora)
    model = model.to(weight_dtype(precision))  # bf16_pure: bf16 weights and optimizer state, as tsrec train
    tt = title_text(params, data_dir)
    train_rows = title_examples(tt, load_split(data_dir, "train"), tokenizer)
    valid_rows = title_examples(tt, _subsample(load_split(data_dir, "valid"), cfg.valid_rows, int(seed)), tokenizer)
    ckpt_dir = out / "checkpoints"
    claim_checkpoints(ckpt_dir, fingerprint, also=(out / "plots",))
    drop_incomplete_checkpoints(ckpt_dir)
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(ckpt_dir))
    args = training_arguments(cfg, ckpt_dir, int(seed), precision, device, params.get("_path"))
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
    meta = {"dataset": ds, "variant": SFT_RUN, "seed": int(seed), "fingerprint": fingerprint,
            "backbone": str(bcfg.path), "backbone_id": backbone_id(bcfg.path), "params": recorded,
            "inputs_sha256": inputs,
            "train": {"steps": trainer.state.global_step, "max_steps": trainer.state.max_steps,
                      "stopped_early": trainer.state.global_step < trainer.state.max_steps,
                      "best_metric": trainer.state.best_metric, "select": cfg.select,
                      "examples": len(train_rows),
                      "precision": precision, "train_loss": result.training_loss, "wall_s": round(wall, 1),
                      "tokens_seen": tokens, "tokens_per_s": round(tokens / wall, 1) if wall else None,
                      "machine": pinning.record(pinning.config(params), file=params.get("_path"))}}
    save_final(trainer.model, tokenizer, meta, out / "final")
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return meta


# ---------------------------------------------------------------- S-DPO
def sdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-prompt softmax-DPO loss: ``-log sigmoid(-log sum_j exp(beta * (r_j - r_c)))`` with r = policy minus
    reference sequence log-prob; chosen [B], rejected [B, K] (the official ``dpo_loss``)."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    return -F.logsigmoid(-torch.logsumexp(beta * (rejected - chosen[:, None]), dim=1))


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the label tokens' log-probs per sequence [N] (official: average_log_prob=False); vocabulary
    logits only at label positions (as ``tsrec.model.sft.label_position_loss``)."""
    head = model.get_output_embeddings()
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    lab = labels[:, 1:]
    keep = lab != IGNORE
    logp = torch.log_softmax(head(out.hidden_states[-1][:, :-1][keep]).float(), dim=-1)
    tok = logp.gather(-1, lab[keep][:, None]).squeeze(-1)
    rows = torch.arange(lab.shape[0], device=lab.device)[:, None].expand_as(lab)[keep]
    return torch.zeros(lab.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)


def sdpo_examples(tt: TitleText, rows: pd.DataFrame, tokenizer, neg_num: int, seed: int) -> list[dict]:
    """Per row: the chosen (target) and ``neg_num`` rejected responses, items drawn uniformly among the items
    whose title differs from the target's (official: drawn from the prompt's candidate list)."""
    rng = random.Random(seed)
    pool = sorted(tt.titles)
    out = []
    for hist, target in zip(rows["history"], rows["target"]):
        hist, target = [int(h) for h in hist], int(target)
        negs: list[int] = []
        while len(negs) < neg_num:
            j = rng.choice(pool)
            if tt.title(j) not in {tt.title(x) for x in [target, *negs]}:  # distinct titles, none the target's
                negs.append(j)
        prompt, _ = tt.render(hist, target)
        seqs = [encode_pair(tokenizer, prompt, tt.response(i), tt.cfg.max_len) for i in [target, *negs]]
        out.append({"seqs": seqs})
    return out


@dataclasses.dataclass
class SDPOCollator:
    pad_id: int

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [s for b in batch for s in b["seqs"]]
        n = max(len(ids) for ids, _ in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (x, y) in enumerate(seqs):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "group": torch.tensor(len(batch[0]["seqs"]))}


def _sdpo_trainer_class():
    from transformers import Trainer

    class SDPOTrainer(Trainer):
        """``compute_loss`` = S-DPO over [chosen, K rejected] groups; the reference model is frozen."""

        def __init__(self, *a, ref_model=None, beta: float = 1.0, **kw):
            super().__init__(*a, **kw)
            self.ref_model, self.beta = ref_model, beta

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            g = int(inputs["group"])
            args = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            policy = sequence_logps(model, *args).view(-1, g)
            with torch.no_grad():
                ref = sequence_logps(self.ref_model, *args).view(-1, g)
            loss = sdpo_loss(policy[:, 0], policy[:, 1:], ref[:, 0], ref[:, 1:], self.beta).mean()
            return (loss, {"loss": loss.detach()}) if return_outputs else loss

    return SDPOTrainer


def train_sdpo(params: dict, ds: str, seed: int) -> dict:
    """S-DPO from the title SFT of ``seed`` -> ``runs/sdpo/seed<N>/final``."""
    from transformers import TrainingArguments, set_seed

    from tsrec.model.runs import META, load_trained, save_final

    lcfg = llm_config(params)
    scfg = lcfg.sdpo
    data_dir = Path(section(params, "data", DataConfig).out) / ds
    sft_dir = run_folder(params, ds, SFT_RUN, seed)
    if not (sft_dir / "final").is_dir():
        raise TsrecError("no title SFT run to start S-DPO from (run `tsrec llm-baseline --model bigrec` or d3 first)",
                         file=sft_dir / "final")
    set_seed(int(seed))
    model, tokenizer, sft_meta = load_trained(sft_dir)
    ref, _, _ = load_trained(sft_dir)
    ref.eval().requires_grad_(False)
    from tsrec.lm import llm as bb

    bcfg = bb.backbone_config(params)
    model = bb.prepare_for_finetune(model, bcfg.finetune, bcfg.lora)  # official: LoRA on the SFT adapter
    model.train()
    tt = TitleText(title_text(params, data_dir).titles, lcfg, _run_prompts(params, sft_meta))
    rows = _subsample(load_split(data_dir, "train"), scfg.train_prompts, int(seed))
    examples = sdpo_examples(tt, rows, tokenizer, scfg.neg_num, int(seed))
    out = run_folder(params, ds, SDPO_RUN, seed)
    ckpt_dir = out / "checkpoints"
    fingerprint = sha256_json({"sdpo": dataclasses.asdict(scfg), "sft": sft_meta.get("fingerprint"), "seed": int(seed),
                               "finetune": bcfg.finetune, "lora": dataclasses.asdict(bcfg.lora)})
    done = out / "final" / META
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
        log.info("%s: S-DPO already trained with this configuration, kept", out)
        return json.loads(done.read_text(encoding="utf-8"))
    claim_checkpoints(ckpt_dir, fingerprint)
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(ckpt_dir))
    args = TrainingArguments(
        output_dir=str(ckpt_dir), seed=int(seed), data_seed=int(seed), num_train_epochs=scfg.epochs,
        max_steps=scfg.max_steps, per_device_train_batch_size=scfg.batch_size,
        gradient_accumulation_steps=scfg.grad_accum, learning_rate=scfg.lr, weight_decay=scfg.weight_decay,
        lr_scheduler_type=scfg.schedule, warmup_steps=scfg.warmup_ratio,  # < 1: a ratio (transformers 5) save_strategy="steps",
        save_steps=max(scfg.logging_steps, 1) * 5, save_total_limit=1, logging_steps=scfg.logging_steps,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        disable_tqdm=True)
    trainer = _sdpo_trainer_class()(model=model, args=args, train_dataset=examples,  # a list: map-style dataset
                                    data_collator=SDPOCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                                    ref_model=ref, beta=scfg.beta)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    meta = {**sft_meta, "variant": SDPO_RUN, "sft_fingerprint": sft_meta.get("fingerprint"),
            "fingerprint": fingerprint, "sdpo": dataclasses.asdict(scfg),
            "sdpo_train": {"steps": trainer.state.global_step, "prompts": len(examples),
                           "train_loss": result.training_loss, "wall_s": round(time.time() - t0, 1),
                           "machine": pinning.record(pinning.config(params), file=params.get("_path"))}}
    save_final(trainer.model, tokenizer, meta, out / "final")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return meta


# ---------------------------------------------------------------- BIGRec: generation + grounding
@torch.inference_mode()
def last_hidden(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[n, d]: the last layer's hidden state at each text's last token (left-padded batches, the tokenizer's
    default special tokens), as BIGRec's ``embedding.ipynb`` / ``evaluate.py``."""
    from tsrec.lm.decoding import left_pad

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        seqs = [list(tokenizer(t)["input_ids"]) or [pad] for t in texts[s:s + batch_size]]
        ids, mask = left_pad(seqs, pad, device=dev)
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1).hidden_states
        out.append(hs[-1][:, -1, :].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def ground(predicted: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] column indices of ``items`` nearest (L2) to each row of ``predicted``, nearest first (stable)."""
    dist = torch.cdist(predicted.float(), items.float(), p=2)
    return dist.argsort(dim=1, stable=True)[:, :k]


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: list[list[int]], beams: int, max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """The top beam's text per prompt (unconstrained beam search, HF defaults otherwise: official BIGRec)."""
    from transformers import GenerationConfig

    from tsrec.lm.decoding import left_pad, library_generation_defaults

    eos = tokenizer.eos_token_id
    dev = next(model.parameters()).device
    config = GenerationConfig(num_beams=beams, num_return_sequences=1, do_sample=False, max_new_tokens=max_new_tokens,
                              eos_token_id=eos, pad_token_id=eos)
    texts = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s:s + batch_size], eos, device=dev)
        with library_generation_defaults(model):
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        texts += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return texts


def clean_title(text: str) -> str:
    """Official: strip spaces, newlines and quotes around a generated / catalogue title."""
    return text.strip(" \n").strip('"').strip(" ")


# ---------------------------------------------------------------- D3: title trie + assistant
class AssistantProcessor:
    """D3's text-free assistant as an HF logits processor, after the trie mask, on the beams' log-probs.

    ``probs`` [n_prompts, n_leaves]: the assistant's probability of each trie leaf (the sum over its items of
    the softmax over all items). For a beam whose generated prefix is p and the allowed tokens A(p):
    ``a(t) = mass(p + t) / sum_{u in A(p)} mass(p + u)`` (mass: summed leaf probabilities under the prefix, +1e-20;
    the end token after a full title carries that title's own leaf), and the step's scores become
    ``gs * s + (1 - gs) * log a`` on A(p) (disallowed tokens stay -inf). |A(p)| = 1 (a ghost token): a = 1.
    """

    def __init__(self, trie, probs: torch.Tensor, num_beams: int, prompt_len: int, guidance_scale: float):
        self.trie, self.probs, self.B, self.L, self.gs = trie, probs.float(), num_beams, prompt_len, guidance_scale
        self.under: dict[tuple[int, ...], list[int]] = {}
        for leaf, seq in enumerate(trie.sids):
            for d in range(1, len(seq) + 1):
                self.under.setdefault(seq[:d], []).append(leaf)
            self.under[(*seq, trie.end[0])] = [leaf]
        self._segments: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def masses(self, row: int, prefix: tuple[int, ...], allowed: list[int]) -> torch.Tensor:
        """mass(prefix + t) for every allowed t, + 1e-20 (one index_add per step; segments cached per prefix)."""
        seg = self._segments.get(prefix)
        if seg is None:
            under = [self.under.get((*prefix, t), []) for t in allowed]
            seg = self._segments[prefix] = (torch.tensor([x for u in under for x in u], dtype=torch.long),
                                            torch.tensor([j for j, u in enumerate(under) for _ in u], dtype=torch.long))
        leaves, which = seg
        return torch.zeros(len(allowed)).index_add_(0, which, self.probs[row, leaves]) + 1e-20

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.gs == 1.0:
            return scores
        out = scores.clone()
        for r in range(input_ids.shape[0]):
            prefix = tuple(input_ids[r, self.L:].tolist())
            allowed = self.trie.allowed(prefix)
            if len(allowed) < 2:  # a ghost token (or a finished beam): no assistant term
                out[r] = self.gs * scores[r]
                continue
            m = self.masses(r // self.B, prefix, allowed)
            a = torch.log(m / m.sum()).to(scores.device, scores.dtype)
            idx = torch.tensor(allowed, device=scores.device)
            out[r] = self.gs * scores[r]
            out[r, idx] = self.gs * scores[r, idx] + (1 - self.gs) * a
        return out


class _Temperature:
    def __init__(self, t: float):
        self.t = t

    def __call__(self, input_ids, scores):
        return scores / self.t


def title_trie(tt: TitleText, tokenizer):
    from tsrec.lm.decoding import SidTrie

    return SidTrie.from_texts({i: tt.response(i) for i in sorted(tt.titles)}, tokenizer)


def constrained_titles(model, tokenizer, trie, prompts: list[list[int]], beams: int, batch_size: int,
                       leaf_probs: torch.Tensor | None = None, guidance_scale: float = 1.0,
                       temperature: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
    """Title-trie beam search per prompt (``reference_beam_search``, length_penalty 0): the leaf ids best first
    and their scores. ``leaf_probs`` [n_prompts, n_leaves]: D3's assistant (``AssistantProcessor``)."""
    from tsrec.lm.decoding import left_pad, reference_beam_search

    pad = tokenizer.eos_token_id
    dev = next(model.parameters()).device
    leaves, scores = [], []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s:s + batch_size], pad, device=dev)
        procs = [] if temperature == 1.0 else [_Temperature(temperature)]
        if leaf_probs is not None and guidance_scale < 1.0:
            procs.append(AssistantProcessor(trie, leaf_probs[s:s + batch_size], beams, ids.shape[1], guidance_scale))
        res = reference_beam_search(model, ids, mask, trie, beams, logits_processor=procs or None)
        for row, sc in zip(res.sid_ids.tolist(), res.scores.tolist()):
            keep = [(leaf, x) for leaf, x in zip(row, sc) if leaf >= 0]
            leaves.append([leaf for leaf, _ in keep])
            scores.append([round(x, 5) for _, x in keep])
    return leaves, scores


def assistant_model(params: dict, ds: str, seed: int):
    """D3's text-free assistant: a SASRec of this harness (``tsrec.baselines``: its net, trainer and the
    ``baselines`` section's settings), with the lr / dropout / width the baseline stage's tuning chose where
    its record exists (``baselines.out``), trained with ``seed``. Returns (recommender, chosen knobs)."""
    from tsrec.baselines.sequential import IDRecommender, SASRecConfig
    from tsrec.baselines.trainer import FitConfig, SeqData
    from tsrec.core.config import from_dict
    from tsrec.data.layout import baseline_seed_file, index_path
    from tsrec.eval.metrics import read_with_run

    raw = params.get("baselines") or {}
    data_dir = Path(section(params, "data", DataConfig).out) / ds
    data = SeqData(data_dir, int(raw.get("max_len", 10)), index_file=index_path(params, ds))
    knobs: dict = {}
    for s in [seed, *(raw.get("seeds") or [])]:
        f = baseline_seed_file(raw.get("out", "results"), ds, "sasrec", s)
        if f.is_file():
            knobs = read_with_run(f).get("config") or {}
            break
    sas = dict(raw.get("sasrec") or {})
    train = {**(raw.get("train") or {}), **(sas.pop("train", None) or {})}
    sas.update({k: v for k, v in (("dropout", knobs.get("dropout")), ("hidden", knobs.get("width"))) if v is not None})
    if "lr" in knobs:
        train["lr"] = knobs["lr"]
    rec = IDRecommender(data, int(seed), "sasrec", from_dict(SASRecConfig, sas, "baselines.sasrec"),
                        from_dict(FitConfig, train, "baselines.train"))
    return rec, knobs


def assistant_probs(params: dict, ds: str, seed: int, histories: list[list[int]], trie) -> tuple[torch.Tensor, dict]:
    """[rows, leaves]: the assistant's (``assistant_model``) softmax over all items, summed per trie leaf."""
    rec, knobs = assistant_model(params, ds, seed)
    fitted = rec.fit()
    probs = torch.cat([rec.scores(histories[s:s + 512]).softmax(-1) for s in range(0, len(histories), 512)])
    col = {item: c for c, item in enumerate(rec.data.item_ids)}
    member = torch.zeros(len(rec.data.item_ids), len(trie))
    for leaf, items in enumerate(trie.items):
        for i in items:
            member[col[i], leaf] = 1.0
    info = {"model": "sasrec", "config": knobs, "epochs": fitted.epochs, "best_epoch": fitted.best_epoch,
            "valid_NDCG@10": fitted.best_valid, "train_time_s": round(fitted.train_time_s, 1)}
    return probs @ member, info


# ---------------------------------------------------------------- scoring (the evaluate stage's files)
def _run_prompts(params: dict, meta: dict) -> PromptsConfig:
    from tsrec.model.scoring import run_prompts

    return run_prompts(params, meta)


def score(params: dict, ds: str, model_name: str, seed: int, *, results: str = "results",
          artifacts: str = "artifacts", command: str = "") -> dict:
    """Rank the test (``evaluate.split``) rows with one LLM baseline; write metrics, run record and ranks."""
    from tsrec.baselines.trainer import SeqData
    from tsrec.data.layout import eval_dir, index_path, results_dir, split_suffix
    from tsrec.eval.metrics import both_levels, ranks
    from tsrec.model.runs import load_trained
    from tsrec.core.precision import resolve_device
    from tsrec.model.scoring import EvaluateConfig, commit_outputs, select_rows

    lcfg = llm_config(params)
    ecfg = section(params, "evaluate", EvaluateConfig)
    data_dir = Path(section(params, "data", DataConfig).out) / ds
    ipath = index_path(params, ds)
    run = run_folder(params, ds, SDPO_RUN if model_name == "sdpo" else SFT_RUN, seed)
    device = resolve_device(ecfg.device)
    if ecfg.threads:
        torch.set_num_threads(ecfg.threads)
    model, tokenizer, meta = load_trained(run, device=device)
    tt = TitleText(title_text(params, data_dir).titles, lcfg, _run_prompts(params, meta))
    data = SeqData(data_dir, index_file=ipath)
    gran = data.gran
    split_df = load_split(data_dir, ecfg.split)
    rows = split_df.iloc[select_rows(len(split_df), ecfg.subsample, global_seed(params))]
    histories = [[int(h) for h in hist] for hist in rows["history"]]
    prompts = [encode_prompt(tokenizer, tt.render(h)[0])[-(lcfg.max_len - 1):] for h in histories]
    k = ecfg.beams
    extra: dict = {}
    t0 = time.perf_counter()
    if model_name == "bigrec":
        g = lcfg.grounding
        texts = generate_texts(model, tokenizer, prompts, g.gen_beams, g.max_new_tokens, lcfg.batch_size)
        if g.encoder == "base":
            from tsrec.lm.llm import backbone_config, load_backbone

            bcfg = backbone_config(params)
            encoder, enc_tok = load_backbone(bcfg.path, bcfg.keep_layers)
            encoder.to(device).eval()
        else:
            encoder, enc_tok = model, tokenizer
        item_ids = sorted(tt.titles)
        item_emb = last_hidden(encoder, enc_tok, [clean_title(tt.title(i)) for i in item_ids], g.batch_size)
        pred_emb = last_hidden(encoder, enc_tok, [clean_title(t) for t in texts], g.batch_size)
        top = ground(pred_emb, item_emb, min(len(item_ids), k + gran.slack)).tolist()
        ranked_items = [[item_ids[c] for c in row] for row in top]
        catalogue = {clean_title(tt.title(i)) for i in item_ids}
        extra = {"generated": texts, "exact_title_match": sum(clean_title(t) in catalogue for t in texts)}
        scores_col = None
    else:
        trie = title_trie(tt, tokenizer)
        leaf_probs, assistant = None, None
        if model_name == "d3" and lcfg.d3.assistant == "sasrec" and lcfg.d3.guidance_scale < 1.0:
            leaf_probs, assistant = assistant_probs(params, ds, seed, histories, trie)
        t0 = time.perf_counter()  # decoding time only (the assistant's training is recorded apart)
        leaves, scores_col = constrained_titles(
            model, tokenizer, trie, prompts, k, lcfg.batch_size, leaf_probs,
            lcfg.d3.guidance_scale if model_name == "d3" else 1.0,
            lcfg.d3.temperature if model_name == "d3" else 1.0)
        ranked_items = [[i for leaf in row for i in trie.items[leaf]] for row in leaves]
        extra = {"assistant": assistant}
    wall = time.perf_counter() - t0
    targets = [int(t) for t in rows["target"]]
    item_lists = [lst[:k] for lst in ranked_items]
    sid_lists = [gran.to_sids(lst, k) for lst in ranked_items]
    item_ranks = ranks(item_lists, targets)
    sid_ranks = ranks(sid_lists, [gran.item_sid[t] for t in targets])
    ranks_df = pd.DataFrame({"row": rows.index.to_numpy(), "user_id": rows["user_id"].to_numpy(),
                             "target": targets, "target_sid": ["".join(gran.item_sid[t]) for t in targets],
                             "rank": sid_ranks, "item_rank": item_ranks, "ranked_items": item_lists,
                             "ranked_sids": [["".join(s) for s in lst] for lst in sid_lists]})
    if scores_col is not None:
        ranks_df["scores"] = scores_col
    if model_name == "bigrec":
        ranks_df["generated"] = extra["generated"]
    numbers = {"seed": int(seed), **both_levels(sid_ranks, item_ranks), "n_rows": len(rows),
               "n_rows_split": len(split_df), "rows_with_fewer_than_B_sids": sum(len(s) < k for s in sid_lists),
               "wall_time_s": round(wall, 2), "rows_per_s": round(len(rows) / wall, 3) if wall > 0 else None}
    record = {"dataset": ds, "variant": model_name, "seed": int(seed), "split": ecfg.split,
              "subsample": None if len(rows) == len(split_df) else {"n": len(rows), "seed": global_seed(params)},
              "beams": k, "llm_baselines": dataclasses.asdict(lcfg),
              "model": {"run": str(run), "meta": meta},
              **({"exact_title_match": extra["exact_title_match"]} if model_name == "bigrec" else {}),
              **({"assistant": extra["assistant"]} if extra.get("assistant") else {}),
              "index": {"path": str(ipath), "sha256": sha256_file(ipath)},
              "decoding": {"bigrec": "unconstrained beam search -> top text -> L2 grounding over item titles",
                           "d3": "title-trie beam search, length_penalty 0, text-free assistant",
                           "sdpo": "title-trie beam search, length_penalty 0"}[model_name],
              "device": device, "host": platform.machine(), "torch_threads": torch.get_num_threads(),
              "machine": pinning.record(pinning.config(params), file=params.get("_path")), "command": command}
    suffix = split_suffix(ecfg.split)
    metrics_file = results_dir(results, ds, model_name, seed) / f"metrics{suffix}.json"
    commit_outputs(metrics_file, numbers, record, eval_dir(artifacts, ds, model_name, seed),
                   f"ranks{suffix}.parquet", ranks_df)
    return numbers


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", choices=MODELS, help="the baseline to train (S-DPO) and score")
    p.add_argument("--sft-only", action="store_true", help="train the shared title SFT of --seed only "
                   "(stage llm-sft); without it the SFT run must exist")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the top-level seed)")
    p.add_argument("--results", default="results")
    p.add_argument("--artifacts", default="artifacts")


def run(args, params) -> None:
    import shlex

    lcfg = llm_config(params)
    seed = global_seed(params) if args.seed is None else int(args.seed)
    ds = args.dataset
    if args.sft_only:
        meta = train_title_sft(params, ds, seed)
        print(f"{ds}/{SFT_RUN} seed {seed}: {meta.get('train')}")
        return
    if args.model is None:
        raise ParamError("--model is required (or --sft-only)", field="--model")
    if args.model not in lcfg.models:
        raise ParamError(f"model {args.model!r} is not in llm_baselines.models {lcfg.models}",
                         file=params.get("_path"), field="llm_baselines.models")
    train_title_sft(params, ds, seed, train=False)  # the shared SFT must exist, made with this configuration
    if args.model == "sdpo":
        train_sdpo(params, ds, seed)
    command = shlex.join(["tsrec", "--params", params.get("_path", "params.yaml"), *sys.argv[2:]]) \
        if sys.argv[1:2] == ["--params"] else shlex.join(["tsrec", *sys.argv[1:]])
    m = score(params, ds, args.model, seed, results=args.results, artifacts=args.artifacts, command=command)
    print(f"{ds}/{args.model} seed {seed}: NDCG@10={m['NDCG@10']:.4f} item/NDCG@10={m['item/NDCG@10']:.4f} "
          f"HR@10={m['HR@10']:.4f} n={m['n_rows']}")
