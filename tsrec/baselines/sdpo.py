"""S-DPO (Chen et al. 2024, github chenyuxin1999/S-DPO ``trainer/softmax_dpo_trainer.py``): from the title SFT
model (``tsrec.baselines.llm_titles``), the softmax-DPO loss with ``sdpo.neg_num`` uniformly sampled negative
items per prompt and a frozen reference model (the SFT model), ``sdpo_loss``; scored like D3 without the
assistant (``tsrec.baselines.llm_scoring``).

TRL is not used (it is not in this environment, and ``tsrec.model.grpo`` set the precedent): TRL's DPOTrainer takes
one rejected response per prompt, so S-DPO's multi-negative loss, batching and log-prob gathering would all
have to be rewritten anyway (the official code subclasses an old DPOTrainer and overrides exactly those). Kept
from the HF stack: ``transformers.Trainer`` (optimizer, schedule, accumulation, checkpoints) with
``compute_loss`` replaced; the reference model is a frozen copy loaded from the SFT run (what TRL's
``create_reference_model`` would give).
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
import torch.nn.functional as F

from tsrec.baselines.llm_config import LLMJob, SDPOConfig
from tsrec.baselines.names import SDPO_RUN
from tsrec.baselines.llm_titles import TitleText, load_titles, subsample_rows
from tsrec.core import pinning
from tsrec.core.errors import TsrecError
from tsrec.core.io import claim_checkpoints, sha256_json
from tsrec.data.datasets import load_split
from tsrec.model.runs import META, load_trained, save_final
from tsrec.model.tasks import IGNORE, PromptsConfig, encode_pair

log = logging.getLogger(__name__)


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


def sdpo_arguments(scfg: SDPOConfig, ckpt_dir: Path, seed: int):
    """The HF TrainingArguments of S-DPO (softmax_dpo.sh's schedule; a checkpoint every 5 logging intervals)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir), seed=seed, data_seed=seed, num_train_epochs=scfg.epochs,
        max_steps=scfg.max_steps, per_device_train_batch_size=scfg.batch_size,
        gradient_accumulation_steps=scfg.grad_accum, learning_rate=scfg.lr, weight_decay=scfg.weight_decay,
        lr_scheduler_type=scfg.schedule, warmup_steps=scfg.warmup_ratio,  # < 1: a ratio (transformers 5) save_strategy="steps",
        save_steps=max(scfg.logging_steps, 1) * 5, save_total_limit=1, logging_steps=scfg.logging_steps,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        disable_tqdm=True)


def train_sdpo(job: LLMJob, sft_dir: Path, out: Path, prompts: PromptsConfig) -> dict:
    """S-DPO from the title SFT run ``sft_dir`` of ``job.seed`` -> ``<out>/final`` (``runs/sdpo/seed<N>``);
    ``prompts``: the SFT run's prompt text (``tsrec.model.scoring.run_prompts`` of its meta)."""
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from tsrec.lm import llm as bb

    scfg, seed, bcfg = job.cfg.sdpo, int(job.seed), job.backbone
    if not (sft_dir / "final").is_dir():
        raise TsrecError("no title SFT run to start S-DPO from (run `tsrec llm-baseline --model bigrec` or d3 first)",
                         file=sft_dir / "final")
    set_seed(seed)
    model, tokenizer, sft_meta = load_trained(sft_dir)
    ref, _, _ = load_trained(sft_dir)
    ref.eval().requires_grad_(False)
    model = bb.prepare_for_finetune(model, bcfg.finetune, bcfg.lora)  # official: LoRA on the SFT adapter
    model.train()
    tt = TitleText(load_titles(job.data_dir), job.cfg, prompts)
    rows = subsample_rows(load_split(job.data_dir, "train"), scfg.train_prompts, seed)
    examples = sdpo_examples(tt, rows, tokenizer, scfg.neg_num, seed)
    ckpt_dir = out / "checkpoints"
    fingerprint = sha256_json({"sdpo": dataclasses.asdict(scfg), "sft": sft_meta.get("fingerprint"), "seed": seed,
                               "finetune": bcfg.finetune, "lora": dataclasses.asdict(bcfg.lora)})
    done = out / "final" / META
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
        log.info("%s: S-DPO already trained with this configuration, kept", out)
        return json.loads(done.read_text(encoding="utf-8"))
    claim_checkpoints(ckpt_dir, fingerprint)
    resume = get_last_checkpoint(str(ckpt_dir))
    trainer = _sdpo_trainer_class()(model=model, args=sdpo_arguments(scfg, ckpt_dir, seed),
                                    train_dataset=examples,  # a list: map-style dataset
                                    data_collator=SDPOCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                                    ref_model=ref, beta=scfg.beta)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    meta = {**sft_meta, "variant": SDPO_RUN, "sft_fingerprint": sft_meta.get("fingerprint"),
            "fingerprint": fingerprint, "sdpo": dataclasses.asdict(scfg),
            "sdpo_train": {"steps": trainer.state.global_step, "prompts": len(examples),
                           "train_loss": result.training_loss, "wall_s": round(time.time() - t0, 1),
                           "machine": pinning.record(job.repro, file=job.params_file)}}
    save_final(trainer.model, tokenizer, meta, out / "final")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return meta
