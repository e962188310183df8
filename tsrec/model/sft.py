"""The SFT trainer behind the train stage (and the sweep's trials): variant params, model setup (backbone + SID
tokens + SA-Init), the HF Trainer with length grouping, label-position loss and early stopping, resumable
checkpoints, the run folder's ``final/`` model and ``tsrec_meta.json`` (``load_trained`` reads them back),
and the ``--dry-run`` report."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import yaml

from tsrec.core import distributed as dist
from tsrec.core import pinning
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import claim_checkpoints, sha256_file, sha256_json
from tsrec.core.precision import resolve as resolve_precision
from tsrec.core.precision import trainer_args, weight_dtype
from tsrec.data.datasets import load_index
from tsrec.data.sids import index_tokens
from tsrec.lm.llm import BackboneConfig
from tsrec.model.runs import PLOTS, RunSpec, TrainConfig, append_row, append_rows, backbone_id, save_final, trim_logs
from tsrec.model.sainit import SAInitConfig
from tsrec.model.tasks import IGNORE, build_examples, load_corpus, seqrec_examples
from tsrec.semantics.keyword_cache import read_records

log = logging.getLogger(__name__)


def accumulation(cfg: TrainConfig, world_size: int, file: str | None = None) -> int:
    """Gradient accumulation steps: ``global_batch / (batch_size * world_size)``, else ``grad_accum``."""
    if cfg.global_batch is None:
        return cfg.grad_accum
    per_step = cfg.batch_size * world_size
    if cfg.global_batch % per_step:
        raise ParamError(f"global_batch {cfg.global_batch} is not a multiple of batch_size {cfg.batch_size} x "
                         f"{world_size} process(es)", file=file, field="train.global_batch")
    return cfg.global_batch // per_step


def load_model(bcfg: BackboneConfig, scfg: SAInitConfig, tokens: list[str], keywords: Path | None):
    """Backbone (first keep_layers layers) + SID tokens + SA-Init (unless ``sainit.random``) + LoRA/full mode."""
    from tsrec.lm import llm as bb
    from tsrec.model import sainit as sa

    model, tokenizer = bb.load_backbone(bcfg.path, bcfg.keep_layers)
    ids = bb.add_sid_tokens(model, tokenizer, tokens)
    report = sa.sa_init(model, tokenizer, dict(zip(tokens, ids)),
                        [] if scfg.random else read_records(keywords), scfg)
    model = bb.prepare_for_finetune(model, bcfg.finetune, bcfg.lora, ids)
    return model, tokenizer, report


def run_inputs(spec: RunSpec) -> dict[str, str]:
    """sha256 of every input file the run reads (the backbone: ``backbone_id``), for the resume fingerprint."""
    files = {name: spec.data_dir / f"{name}.parquet" for name in ("items", "train", "valid")}
    files["sid_index"] = spec.index_path
    if not spec.sainit.random or spec.tasks.tsalign.enabled:  # SA-Init / TS-Align read the cache
        files["keywords"] = spec.keyword_cache
    return {name: sha256_file(path) for name, path in files.items()}


def _check_dataset(data_dir: Path) -> None:
    if not (data_dir / "items.parquet").is_file():
        raise TsrecError("dataset not found (run `tsrec data`, or check --dataset and data.out)", file=data_dir)


# ---------------------------------------------------------------- checkpoints
def _checkpoint_complete(path: Path) -> bool:
    """transformers writes trainer_state.json last: without it (or torn, or for another step) a save was cut."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        step = int(path.name.rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return False
    return (isinstance(state, dict) and state.get("global_step") == step and any(path.glob("*.safetensors"))
            and all((path / f).is_file() for f in ("optimizer.pt", "scheduler.pt"))
            and any(path.glob("rng_state*.pth")))


def drop_incomplete_checkpoints(ckpt_dir: Path) -> list[str]:
    """Remove ``checkpoint-N/`` folders a kill left half-written, so a resume picks a complete one."""
    dropped = []
    for path in sorted(ckpt_dir.glob("checkpoint-*")):
        if path.is_dir() and not _checkpoint_complete(path):
            log.warning("%s is incomplete (killed while saving?): removing it", path)
            shutil.rmtree(path)
            dropped.append(path.name)
    return dropped


# ---------------------------------------------------------------- batches + loss
class Examples(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return {"input_ids": r["input_ids"], "labels": r["labels"], "weight": r["weight"]}


@dataclasses.dataclass
class Collator:
    pad_id: int

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)  # pads masked by position
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "weight": torch.tensor([b["weight"] for b in batch], dtype=torch.float32)}


def label_position_loss(model, head, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted token CE, number of label tokens); vocabulary logits only at label positions.

    ``model`` is called as a whole (so DDP hooks run); its final normed hidden states are gathered at
    the positions that predict a label and only those go through ``head`` (the lm_head). The model's own
    head gets no position (``logits_to_keep`` = an empty index): its logits would be unused (batch x
    vocabulary x hidden FLOPs, ~2 % of a default-profile step); the loss and gradients are bit-identical.
    """
    labels = inputs["labels"][:, 1:]
    no_logits = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                output_hidden_states=True, logits_to_keep=no_logits, use_cache=False)
    keep = labels != IGNORE
    hidden = out.hidden_states[-1][:, :-1][keep]
    # the head's dtype: under Trainer bf16 the outputs come back fp32 (accelerate), a bf16_pure head is bf16
    ce = F.cross_entropy(head(hidden.to(head.weight.dtype)).float(), labels[keep], reduction="none")
    w = inputs["weight"].to(ce.dtype)[:, None].expand_as(labels)[keep]
    return (ce * w).sum(), keep.sum()


class SeededLengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order, drawn from a generator seeded by (seed, epoch) only.

    transformers' LengthGroupedSampler draws from the global RNG when the epoch starts, so a run resumed
    in a later epoch gets another order than the uninterrupted run. The Trainer calls ``set_epoch`` before
    each epoch (also on a resume), so here each epoch's order is a pure function of (seed, epoch).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        # batch_size: the GLOBAL batch (micro batch x accumulation x processes): the order then does not
        # depend on how that batch is split, so N processes x B/N see the batches of 1 process x B
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


def trainer_class():
    from transformers import Trainer

    class TsrecTrainer(Trainer):
        """Weighted (TS-Align lambda) CE on response tokens, logits only at label positions."""
        loss_is_scaled_for_ga = True

        def _get_train_sampler(self, train_dataset=None):
            train_dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or not isinstance(train_dataset, Examples):
                return super()._get_train_sampler(train_dataset)
            # accelerate hands rank r micro-batches r, r+N, ... of this order: one optimizer step = one global batch
            return SeededLengthGroupedSampler([len(r["input_ids"]) for r in train_dataset.rows],
                                              self.args.train_batch_size * self.args.gradient_accumulation_steps
                                              * self.args.world_size,
                                              self.args.data_seed if self.args.data_seed is not None else self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            total, count = label_position_loss(model, head, inputs)
            if num_items_in_batch is not None and model.training:
                # normalised over the whole accumulated, all-process batch; DDP averages the gradients
                loss = total / num_items_in_batch * self.accelerator.num_processes
            else:
                loss = total / count.clamp(min=1)
                if model.training:
                    loss = loss / self.current_gradient_accumulation_steps
            return (loss, {"loss": loss.detach()}) if return_outputs else loss

    return TsrecTrainer


def csv_logger(plots: Path):
    from transformers import TrainerCallback

    class CsvLog(TrainerCallback):
        """plots/train.csv (loss, lr) and plots/valid.csv (eval_loss): DVC plots data, kept across resumes."""

        eval_s = 0.0
        tokens_at_start = 0

        def on_train_begin(self, args, state, control, **kw):
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)  # > 0 after a resume

        def on_log(self, args, state, control, logs=None, **kw):
            self.eval_s += float((logs or {}).get("eval_runtime", 0.0))
            if not state.is_world_process_zero or not logs:
                return
            for name in ("train.csv", "valid.csv"):
                fields = PLOTS[name]
                if fields[-1] in logs:
                    row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4),
                           **{k: logs[k] for k in fields[2:] if k in logs}}
                    append_row(plots / name, fields, row)

    return CsvLog()


def _rank_callback(rows, trie, index, prompts, cfg: TrainConfig, plots: Path, precision: str):
    """Valid ranking at every evaluation: constrained beam search (the evaluate stage's) on the fixed seeded
    valid rows; adds ``eval_ndcg10`` / ``eval_hr10`` to the evaluation's metrics (so ``select: valid_ndcg10``
    and early stopping can use them; placed before those callbacks) and appends to ``valid_rank*.csv``.
    Decoding draws no random numbers, so a run's training trajectory is the same with or without it. Under a
    multi-process launch each process searches its share of the batches and all get every row (as
    ``torchrun -m tsrec evaluate``), bit-identical to one process on the same threads."""
    from transformers import TrainerCallback

    from tsrec.core.distributed import world
    from tsrec.model.scoring import evaluate_rows
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    w = world()

    class RankEval(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kw):
            was_training = model.training
            with torch.no_grad():
                ranks, summary = evaluate_rows(
                    model, processing_class, trie, index, rows, lambda h: seqrec_prompt(h, prompts, "seqrec"),
                    encode_prompt, beams=cfg.rank_beams, batch_size=cfg.rank_batch,
                    desc=f"valid ranking @ step {state.global_step}", precision=precision, shard=(w.rank, w.size))
            model.train(was_training)
            m = summary["metrics"]
            if metrics is not None:
                metrics.update({"eval_ndcg10": m["NDCG@10"], "eval_hr10": m["HR@10"]})
            if state.is_world_process_zero:
                append_row(plots / "valid_rank.csv", PLOTS["valid_rank.csv"],
                           {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "rows": len(rows),
                            **{k: m[k] for k in PLOTS["valid_rank.csv"][3:-1]}, "wall_s": summary["wall_time_s"]})
                append_rows(plots / "valid_rank_rows.csv", PLOTS["valid_rank_rows.csv"],
                            [{"step": state.global_step, "row": int(r), "rank": int(rank)}
                             for r, rank in zip(ranks["row"], ranks["rank"])])
            log.info("step %d: valid NDCG@10 %.4f HR@10 %.4f (%d rows, %d searched by process %d of %d, %.0f s)",
                     state.global_step, m["NDCG@10"], m["HR@10"], len(rows), summary["searched"], w.rank, w.size,
                     summary["wall_time_s"])

    return RankEval()


SELECT_METRIC = {"valid_loss": ("eval_loss", False), "valid_ndcg10": ("eval_ndcg10", True), "final": (None, None)}


def training_arguments(cfg: TrainConfig, ckpt_dir: Path, seed: int, precision: str, device: str,
                       params_file: str | None = None):
    """The HF TrainingArguments of a run on the ``train`` section's budget, schedule and selection (steps,
    epochs, lr, warmup, evaluation and checkpoint cadence, the metric ``final/`` is chosen by); shared by the
    SFT of every LLM model (tsrec.commands.llm_baseline)."""
    from transformers import TrainingArguments

    world = dist.world()
    extra = trainer_args(precision, device)
    if world.distributed and not torch.cuda.is_available():
        extra["use_cpu"] = True  # accelerate does multi-CPU DDP (gloo) only with use_cpu: else each rank trains alone
    return TrainingArguments(
        output_dir=str(ckpt_dir), seed=seed, data_seed=seed,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=accumulation(cfg, world.size, params_file),
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup_steps,
        eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit, load_best_model_at_end=cfg.select != "final",
        metric_for_best_model=SELECT_METRIC[cfg.select][0], greater_is_better=SELECT_METRIC[cfg.select][1],
        logging_steps=cfg.logging_steps, logging_first_step=True, report_to="none",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, dataloader_pin_memory=False,
        ddp_backend="gloo" if world.distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False, disable_tqdm=not world.main, **extra,
    )


def train_run(spec: RunSpec, *, callbacks: list | None = None) -> dict:
    """Train one run (``resolve_run``: variant, dataset, seed, overrides) into ``spec.run_dir``; returns the
    meta written to ``final/tsrec_meta.json``. The seed seeds everything the run draws (weights, task
    sampling, valid subsample, batch order); a run folder with checkpoints of the same fingerprint resumes."""
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    cfg, out, seed = spec.train, spec.run_dir, spec.seed
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _check_dataset(spec.data_dir)
    index = load_index(spec.index_path)
    tokens = index_tokens(index)
    corpus = load_corpus(spec.data_dir, spec.index_path, spec.keyword_cache, spec.tasks)

    set_seed(seed)
    model, tokenizer, sainit_report = load_model(spec.backbone, spec.sainit, tokens, spec.keyword_cache)
    model = model.to(weight_dtype(precision))  # bf16_pure: bf16 weights, so bf16 AdamW state (the authors')
    train_rows = build_examples(corpus, tokenizer, seed)
    valid_rows = seqrec_examples(spec.data_dir, "valid", corpus.sids, tokenizer, spec.tasks.max_len, cfg.valid_rows,
                                 seed, spec.tasks.prompts)
    meta = run_meta(spec, sainit_report)
    ckpt_dir, plots = out / "checkpoints", out / "plots"
    world = dist.world()
    if world.main:
        claim_checkpoints(ckpt_dir, fingerprint(meta), also=(plots,))
        drop_incomplete_checkpoints(ckpt_dir)
    if world.distributed:  # each rank on its own GPU (LOCAL_RANK) before nccl starts; gloo on CPU
        dist.init(dist.resolve_device("auto", world))
        dist.barrier()
    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if world.main:  # a resumed run keeps its curves up to the checkpoint; a fresh run starts new ones
        trim_logs(plots, int(Path(resume).name.split("-")[-1]) if resume else 0)
    if resume:
        log.info("resuming from %s", resume)

    csv_log = csv_logger(plots)
    trainer = trainer_class()(
        model=model, args=training_arguments(cfg, ckpt_dir, seed, precision, device, spec.params_file),
        train_dataset=Examples(train_rows), eval_dataset=Examples(valid_rows),
        data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=[*run_callbacks(spec, index, tokenizer, plots, precision, world.main), csv_log, *(callbacks or [])],
    )
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    meta["train"] = train_summary(trainer, result, cfg, precision, csv_log, time.time() - t0, resume,
                                  len(train_rows), pinning.record(spec.repro, file=spec.params_file))
    if trainer.is_world_process_zero():
        save_final(trainer.model, tokenizer, meta, out / "final")
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    if world.distributed:
        dist.barrier()
    return meta


def run_meta(spec: RunSpec, sainit_report: dict) -> dict:
    """What the run is: dataset, variant, seed, its inputs (sha256) and settings (before training)."""
    return {
        "dataset": spec.dataset, "variant": spec.variant, "seed": spec.seed,
        "index_path": str(spec.index_path), "index_sha256": sha256_file(spec.index_path),
        "backbone": str(spec.backbone_path), "backbone_id": backbone_id(spec.backbone_path), "sainit": sainit_report,
        "params": spec.recorded,
        "keywords": str(spec.keyword_cache), "inputs_sha256": run_inputs(spec),
        **({"overrides": spec.overrides} if spec.overrides else {}),
    }


def fingerprint(meta: dict) -> str:
    """The resume key: checkpoints of another fingerprint (other inputs or settings) are refused."""
    return sha256_json({k: meta[k] for k in ("index_sha256", "backbone_id", "params", "dataset", "inputs_sha256")})


def run_callbacks(spec: RunSpec, index: dict, tokenizer, plots: Path, precision: str, main: bool) -> list:
    """The valid ranking (``train.rank_rows``), then early stopping on the selection metric (it reads the
    ranking's metrics, so comes after it)."""
    from transformers import EarlyStoppingCallback

    cfg, out = spec.train, []
    if cfg.rank_rows:
        from tsrec.data.datasets import load_split
        from tsrec.lm.decoding import SidTrie
        from tsrec.model.scoring import select_rows

        split = load_split(spec.data_dir, "valid")
        rows = split.iloc[select_rows(len(split), cfg.rank_rows, spec.seed)]
        trie = SidTrie.from_index(index, tokenizer, suffix=spec.tasks.prompts.eos_suffix)
        out.append(_rank_callback(rows, trie, index, spec.tasks.prompts, cfg, plots, precision))
    if main:  # header-only files where nothing is measured, so every run has the same files (DVC plots)
        for name in ("valid_rank.csv", "valid_rank_rows.csv"):
            if not (plots / name).exists():
                append_row(plots / name, PLOTS[name], None)
    if cfg.early_stopping:
        out.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience, early_stopping_threshold=cfg.min_delta))
    return out


def train_summary(trainer, result, cfg: TrainConfig, precision: str, csv_log, wall: float, resume: str | None,
                  examples: int, machine: dict) -> dict:
    """The meta's ``train`` section: steps, why it stopped, the selection, timings and throughput."""
    state = trainer.state
    stopped_early = state.global_step < state.max_steps
    stop_reason = "plateau" if stopped_early else ("step_cap" if cfg.max_steps > 0 else "epochs")
    if not cfg.early_stopping and cfg.max_steps > 0:
        stop_reason = "budget"  # the equal budget of a comparison, not a per-run stop
    best = state.best_metric
    losses = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    best_loss = best if cfg.select == "valid_loss" else (min(losses) if losses else None)
    tokens_seen = int(state.num_input_tokens_seen or 0) - csv_log.tokens_at_start  # this session
    selected = cfg.select != "final"
    return {"steps": state.global_step, "max_steps": state.max_steps,
            "stopped_early": stopped_early, "stop_reason": stop_reason, "best_eval_loss": best_loss,
            "precision": {"requested": cfg.precision, "resolved": precision},
            "select": cfg.select, "schedule": cfg.schedule, "early_stopping": cfg.early_stopping,
            "best_metric": {"name": SELECT_METRIC[cfg.select][0], "value": best} if selected else None,
            "best_checkpoint": (state.best_model_checkpoint and Path(state.best_model_checkpoint).name
                                if selected else None),
            "train_loss": result.training_loss, "wall_s": round(wall, 1),
            "eval_s": round(csv_log.eval_s, 1), "tokens_seen": tokens_seen,
            "tokens_total": int(state.num_input_tokens_seen or 0),
            "tokens_per_s": round(tokens_seen / wall, 1) if wall else None,  # end to end incl. evals
            "train_tokens_per_s": round(tokens_seen / max(wall - csv_log.eval_s, 1e-9), 1),
            "resumed_from": resume and Path(resume).name, "examples": examples,
            "world_size": trainer.args.world_size, **_parallel_record(trainer), "machine": machine}


def _parallel_record(trainer) -> dict:
    """What really ran: accelerate's distributed type and whether the model was wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    return {"distributed_type": str(trainer.accelerator.distributed_type.value),
            "ddp": isinstance(trainer.model_wrapped, DistributedDataParallel)}


# ---------------------------------------------------------------- dry run
def dry_run(spec: RunSpec, *, tokenizer: str | Path | None = None, world_size: int = 1,
            tokens_per_s: float | None = None) -> dict:
    """What ``train_run`` would train, without loading the model: resolved config, examples, tokens and label
    tokens per task, steps. ``tokenizer``: another tokenizer folder than the backbone's (recorded)."""
    from transformers import AutoTokenizer

    from tsrec.lm.llm import add_sid_tokens_to_tokenizer

    cfg, tcfg, seed = spec.train, spec.tasks, spec.seed
    _check_dataset(spec.data_dir)
    tokens = index_tokens(load_index(spec.index_path))
    corpus = load_corpus(spec.data_dir, spec.index_path, spec.keyword_cache, tcfg)
    tok_path = Path(tokenizer) if tokenizer else spec.backbone_path
    if not (tok_path / "tokenizer_config.json").is_file():
        raise TsrecError("no tokenizer here (run `tsrec backbone`, or pass --tokenizer FOLDER)", file=tok_path)
    tok = AutoTokenizer.from_pretrained(tok_path)
    add_sid_tokens_to_tokenizer(tok, tokens)
    rows = build_examples(corpus, tok, seed)
    valid = seqrec_examples(spec.data_dir, "valid", corpus.sids, tok, tcfg.max_len, cfg.valid_rows, seed,
                            tcfg.prompts)
    per_task = task_table(rows, tok, tcfg.max_len)
    tokens_epoch = sum(t["tokens"] for t in per_task.values())
    labels_epoch = sum(t["label_tokens"] for t in per_task.values())
    steps = planned_steps(cfg, len(rows), world_size, spec.params_file)
    report = {
        "dataset": spec.dataset, "variant": spec.variant, "seed": seed, "params_file": spec.params_file,
        "tokenizer": str(tok_path), "tokenizer_is_backbone": tokenizer is None,
        "config": spec.shown,
        "examples": len(rows), "valid_examples": len(valid),
        "tokens_per_epoch": tokens_epoch, "label_tokens_per_epoch": labels_epoch,
        "tasks": per_task, "steps": steps,
        "tokens_planned": round(tokens_epoch * steps["planned"] / steps["per_epoch"]),
    }
    if tokens_per_s:
        report["estimate"] = {"tokens_per_s": tokens_per_s,
                              "train_hours": round(report["tokens_planned"] / tokens_per_s / 3600, 2),
                              "epoch_hours": round(tokens_epoch / tokens_per_s / 3600, 2)}
    report["resolved_yaml"] = yaml.safe_dump(report["config"], sort_keys=False, allow_unicode=True, width=120)
    return report


def task_table(rows: list[dict], tok, max_len: int) -> dict[str, dict]:
    """Per task: examples, tokens, label tokens, length, shares of the label tokens, one decoded example."""
    per_task: dict[str, dict] = {}
    for r in rows:
        t = per_task.setdefault(r["task"], {"examples": 0, "tokens": 0, "label_tokens": 0, "max_len": 0,
                                            "at_max_len": 0, "weight": r["weight"],
                                            "example": tok.decode(r["input_ids"])})
        n, n_lab = len(r["input_ids"]), sum(x != IGNORE for x in r["labels"])
        t["examples"] += 1
        t["tokens"] += n
        t["label_tokens"] += n_lab
        t["max_len"] = max(t["max_len"], n)
        t["at_max_len"] += n >= max_len
    labels_epoch = sum(t["label_tokens"] for t in per_task.values())
    weighted = sum(t["label_tokens"] * t["weight"] for t in per_task.values())
    for t in per_task.values():
        t["mean_tokens"] = round(t["tokens"] / t["examples"], 1)
        t["label_token_share"] = round(t["label_tokens"] / labels_epoch, 4)
        t["weighted_label_share"] = round(t["label_tokens"] * t["weight"] / weighted, 4)
    return per_task


def planned_steps(cfg: TrainConfig, examples: int, world_size: int, params_file: str | None = None) -> dict:
    """Optimizer steps per epoch (HF Trainer's count) and planned for the run, with the batch arithmetic."""
    accum = accumulation(cfg, world_size, params_file)
    batches = math.ceil(examples / (cfg.batch_size * world_size))  # micro-batches per process and epoch
    steps_epoch = max(batches // accum + int(batches % accum > 0), 1)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_epoch)
    return {
        "world_size": world_size, "batch_size": cfg.batch_size, "grad_accum": accum,
        "global_batch": cfg.batch_size * accum * world_size, "per_epoch": steps_epoch,
        "max_steps": cfg.max_steps, "epochs": cfg.epochs, "planned": steps,
        "epochs_covered": round(steps / steps_epoch, 3),
        "eval_every": cfg.eval_steps if isinstance(cfg.eval_steps, int) else math.ceil(cfg.eval_steps * steps),
        "note": "planned = the step cap, or epochs x steps per epoch; early stopping (patience "
                f"{cfg.patience} evaluations) may end it sooner",
    }


def format_dry_run(r: dict) -> str:
    """The dry-run report as text: resolved config, a table per task, steps, one rendered example per task."""
    lines = [f"# tsrec train --dry-run: {r['dataset']} / {r['variant']} (params {r['params_file']})",
             f"tokenizer: {r['tokenizer']}" + ("" if r["tokenizer_is_backbone"] else "  (NOT the backbone's)"),
             "", "## resolved config (variant applied)", r["resolved_yaml"].rstrip(), "", "## examples per epoch",
             "| task | examples | tokens | mean tokens | label tokens | label share | weighted share | at max_len |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in r["tasks"].items():
        lines.append(f"| {name} | {t['examples']:,} | {t['tokens']:,} | {t['mean_tokens']} | {t['label_tokens']:,} | "
                     f"{t['label_token_share']:.1%} | {t['weighted_label_share']:.1%} | {t['at_max_len']} |")
    lines.append(f"| all | {r['examples']:,} | {r['tokens_per_epoch']:,} | "
                 f"{r['tokens_per_epoch'] / max(r['examples'], 1):.1f} | {r['label_tokens_per_epoch']:,} | 100% | 100% | |")
    s = r["steps"]
    lines += ["", f"valid examples (early stopping): {r['valid_examples']:,}",
              f"steps: global batch {s['global_batch']} = {s['batch_size']} x {s['grad_accum']} accumulation x "
              f"{s['world_size']} process(es); {s['per_epoch']:,} steps/epoch; planned {s['planned']:,} steps "
              f"= {s['epochs_covered']} epochs (max_steps {s['max_steps']}, epochs {s['epochs']}); "
              f"valid loss every {s['eval_every']} steps",
              f"tokens planned: {r['tokens_planned']:,} (non-padding); {s['note']}"]
    if "estimate" in r:
        e = r["estimate"]
        lines.append(f"estimate at {e['tokens_per_s']} train tokens/s: {e['train_hours']} h of training "
                     f"({e['epoch_hours']} h per epoch), evaluations not included")
    lines += ["", "## one example per task (decoded input_ids)"]
    for name, t in r["tasks"].items():
        lines += [f"### {name}", "```", t["example"], "```"]
    return "\n".join(lines) + "\n"
