"""rl: GRPO after SFT, the RL stage of MiniOneRec and of the TS-Rec authors' code (``train/rl.py``,
``train/trainer/minionerec_trainer.py``, ``scripts/rl.sh``).

Starts from a trained SFT run of seed N (``runs/<variant>/seed<N>/final``, variant ``sft`` or ``tsrec``) and
writes the run ``runs/<variant>_rl/seed<N>/`` (same layout: ``final/``, ``checkpoints/``, ``plots/``;
tsrec.data.layout) that ``tsrec evaluate --variant <variant>_rl --seed N`` loads like any other; its curves and
summary go to ``results/<DS>/<variant>_rl/seed<N>/``. The seed N (default: the top-level ``seed``) seeds
what the run draws: the prompt subsample, the batch order and the valid subsample. Prompts (RL pool and
valid) are rendered by the task registry (``tsrec.model.tasks``) with the SFT run's prompt text (the ``tasks``
section of its ``tsrec_meta.json``), so they equal what that run was trained on. One optimizer step, for
``batch_size`` prompts:

  rollouts    the project's constrained beam search (``tsrec.lm.decoding.beam_search``): per prompt the
              ``num_generations`` (16) best distinct SIDs + the SFT run's ``tasks.prompts.eos_suffix`` + EOS,
              best first (authors: HF beam search over the trie, num_beams = num_return_sequences = 16,
              length_penalty 0, temperature 1);
  rewards     ``reward_type: ranking`` = rule (``rule_reward``) + ranking (``ranking_reward``);
  advantages  (r - group mean) / (group std + 1e-4), per prompt (``group_advantages``);
  loss        ``grpo_loss``: one update per rollout batch, so the policy ratio is 1 in value and only its
              gradient counts; KL to the reference model with the k3 estimator, weight beta;
  reference   a frozen copy of the SFT model, mixed towards the policy every ``ref_sync_steps`` steps
              (``sync_ref_model``, TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref).

Scoring is cheap on a CPU: the policy and reference log-probs of a prompt's G completions come from ONE
prefill of the prompt, whose KV cache the G completions then share (``completion_logps``, the decoder's
shared-prefix attention, with gradients through it).

TRL is not used. Its GRPOTrainer draws rollouts with ``generate()`` and scores one prompt+completion row
per completion (G prefills of the same prompt); here rollouts come from our beam search and each prompt is
prefilled once. What would be left of TRL is a few lines of maths (k3 KL, the loss, the ref-model mix),
written out here instead of a dependency. Checkpoints, logs and the final model follow ``tsrec.commands.train``.

Device and processes: ``rl.device`` (auto | cpu | cuda | cuda:N) holds the policy, the reference, rollouts and
the update. Under ``torchrun`` each process takes every N-th prompt of the step's batch (the global batch stays
``batch_size`` prompts), scales its loss by its share, and the gradients are summed over the processes before
clipping and the optimizer step, so N processes step as 1 process would; process 0 validates and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from tsrec.core import distributed as dist
from tsrec.core import pinning
from tsrec.core.config import global_seed, section
from tsrec.data.datasets import DataConfig, load_index, load_split
from tsrec.lm.decoding import (
    SHARED_PREFIX_ATTN,
    SharedPrefix,
    SidTrie,
    attention_impl,
    beam_search,
    left_pad,
    positions_from_mask,
    supports_shared_prefix,
)
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, claim_checkpoints, sha256_file, sha256_json, write_json
from tsrec.data.layout import results_dir
from tsrec.core.precision import Precision, autocast, check_device
from tsrec.core.precision import resolve as resolve_precision

log = logging.getLogger(__name__)

SUFFIX = "_rl"           # runs/<variant>_rl: the RL run of SFT variant <variant>
MATRIX_KEYS = ("datasets", "variants", "seeds")  # rl keys that list runs (the DVC matrix), not settings of one
PLACEMENT_KEYS = ("device",)  # where the run runs (recorded in meta rl.device), not what it computes
SID_TASKS = ("seqrec", "item2sid", "title_hist2sid")  # the SFT tasks whose response is a SID
PLOTS = {"rl.csv": ["step", "epoch", "learning_rate", "loss", "kl", "reward", "reward_rule", "reward_ranking",
                    "reward_std", "target_in_group"],
         "rl_valid.csv": ["step", "NDCG@10", "HR@10"]}
GROUP_EPS = 1e-4         # the authors' (r - mean) / (std + 1e-4)


def rl_variant(variant: str) -> str:
    return variant + SUFFIX


# ---------------------------------------------------------------- params
@dataclasses.dataclass
class RLTasks:
    """Share of each SID-response SFT task's pool in the RL prompt pool (0 = unused); see tsrec.model.tasks.draw."""
    seqrec: float = 1.0
    item2sid: float = 0.0
    title_hist2sid: float = 0.0

    def validate(self) -> None:
        shares = [getattr(self, t) for t in SID_TASKS]
        if any(not 0 <= s <= 10 for s in shares) or not any(shares):
            raise ValueError(f"task shares must be in [0, 10], at least one > 0, got {dict(zip(SID_TASKS, shares))}")


@dataclasses.dataclass
class RLConfig:
    # the RL runs (dvc stages rl / evaluate_rl): datasets x variants x seeds, each a subset of the train matrix's
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific"])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["sft", "tsrec"])  # SFT runs to start from
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42])
    tasks: RLTasks = dataclasses.field(default_factory=RLTasks)
    train_prompts: int | None = 1024  # fixed seeded subsample of the prompt pool (None: all of it)
    epochs: float = 2.0
    max_steps: int = -1               # > 0 caps the steps
    batch_size: int = 8               # prompts per optimizer step (x num_generations completions)
    num_generations: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = 0.3
    beta: float = 1e-3                # KL weight
    reward_type: Literal["rule", "ranking", "ranking_only"] = "ranking"
    sync_ref_model: bool = True
    ref_sync_steps: int = 512
    ref_mixup_alpha: float = 0.6
    eval_steps: int = 64              # valid NDCG@10 and a checkpoint every N steps (and at 0 and the end)
    valid_rows: int = 256             # fixed seeded subsample of the valid split
    valid_beams: int = 20
    eval_batch_size: int = 8
    keep_checkpoints: bool = False
    threads: int = 0                  # torch threads (0 = leave as is)
    precision: Precision = "fp32"
    device: str = "auto"              # auto | cpu | cuda | cuda:N (under torchrun auto/cuda = GPU LOCAL_RANK)

    def validate(self) -> None:
        if not self.datasets or not self.seeds:
            raise ValueError("datasets and seeds must not be empty")
        check_device(self.device)
        if not self.variants or any(not v or v.endswith(SUFFIX) or "/" in v for v in self.variants):
            raise ValueError(f"variants must be SFT variant names (not *{SUFFIX}), got {self.variants}")
        for name in ("batch_size", "eval_steps", "ref_sync_steps", "valid_rows", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (a group std needs two), got {self.num_generations}")
        if self.train_prompts is not None and self.train_prompts < 1:
            raise ValueError(f"train_prompts must be >= 1 or null, got {self.train_prompts}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("epochs must be > 0 (or max_steps > 0)")
        if not 0 < self.lr < 1 or self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("lr must be in (0, 1), weight_decay >= 0, warmup_ratio in [0, 1)")
        if self.beta < 0 or self.max_grad_norm <= 0 or not 0 < self.ref_mixup_alpha <= 1:
            raise ValueError("beta must be >= 0, max_grad_norm > 0, ref_mixup_alpha in (0, 1]")
        if self.valid_beams < 10:
            raise ValueError(f"valid_beams must be >= 10 (valid NDCG@10), got {self.valid_beams}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")


def rl_config(params: dict) -> RLConfig:
    return section(params, "rl", RLConfig)


# ---------------------------------------------------------------- rewards + advantages (pure)
def ranking_weights(g: int) -> list[float]:
    """w_i proportional to 1/log2(i+2) over ALL g beam positions, summing to 1 (the authors' ``ndcg_rewards``)."""
    w = [1.0 / math.log2(i + 2) for i in range(g)]
    return [x / sum(w) for x in w]


def rule_reward(completions: Sequence[Hashable], target: Hashable) -> list[float]:
    """1 for a completion equal to the target SID, else 0."""
    return [1.0 if c == target else 0.0 for c in completions]


def ranking_reward(completions: Sequence[Hashable], target: Hashable) -> list[float]:
    """-w_i for the non-target completion at beam position i when the group holds the target; the target
    (every copy of it) gets 0, and a group without the target gets 0 everywhere."""
    if target not in completions:
        return [0.0] * len(completions)
    w = ranking_weights(len(completions))
    return [0.0 if c == target else -w[i] for i, c in enumerate(completions)]


REWARD_PARTS = {"rule": ("rule",), "ranking": ("rule", "ranking"), "ranking_only": ("ranking",)}


def group_rewards(completions: Sequence[Hashable], target: Hashable, reward_type: str
                  ) -> tuple[list[float], dict[str, list[float]]]:
    """(reward per completion, both parts) for one group: the reward sums the parts ``reward_type`` names."""
    parts = {"rule": rule_reward(completions, target), "ranking": ranking_reward(completions, target)}
    used = REWARD_PARTS[reward_type]
    return [sum(parts[p][i] for p in used) for i in range(len(completions))], parts


def group_advantages(rewards: torch.Tensor, eps: float = GROUP_EPS) -> torch.Tensor:
    """GRPO advantages of [n, G] rewards: (r - group mean) / (group std + eps), std unbiased (as torch.std)."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor, beta: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL) over [n, G, T] token log-probs and [n, G] advantages, as the authors' compute_loss:
    per token -(exp(logp - logp.detach()) * A - beta * KL), KL = exp(ref - logp) - (ref - logp) - 1; mean over
    a completion's tokens, then over completions (every completion has the same T tokens: SID + EOS)."""
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    per_token = -(torch.exp(logp - logp.detach()) * advantages[..., None] - beta * kl)
    return per_token.mean(-1).mean(), kl.detach().mean(-1).mean()


# ---------------------------------------------------------------- scoring: one prefill per prompt
def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completions: torch.Tensor,
                     *, shared_prefix: bool | None = None) -> torch.Tensor:
    """Full-vocabulary token log-probs [n, G, T] of G completions [n, G, T] per left-padded prompt [n, L].

    The prompt is prefilled ONCE; its last logits score every completion's first token, then the G
    completions run as one batch of n*G rows over the prompt's KV cache: kept once per prompt
    (``shared_prefix``, default where the model supports it) or copied G times (same numbers).
    Differentiable: call under torch.no_grad() for the reference model.
    """
    from transformers import DynamicCache

    n, g, t = completions.shape
    if shared_prefix is None:
        shared_prefix = supports_shared_prefix(model)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).gather(1, completions[:, :, 0])  # [n, G]
    if t == 1:
        return first[..., None]
    steps = completions[:, :, :-1].reshape(n * g, t - 1)
    pos = (attention_mask.long().sum(-1)[:, None] + torch.arange(t - 1, device=steps.device)).repeat_interleave(g, 0)
    if shared_prefix:
        prefix = SharedPrefix([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                              attention_mask.bool())
        with attention_impl(model, SHARED_PREFIX_ATTN):
            out = model(input_ids=steps, position_ids=pos, use_cache=False, shared_prefix=prefix)
    else:
        cache.batch_repeat_interleave(g)
        mask = torch.cat([attention_mask.repeat_interleave(g, 0), attention_mask.new_ones((n * g, t - 1))], dim=1)
        out = model(input_ids=steps, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    rest = torch.log_softmax(out.logits.float(), dim=-1).gather(-1, completions[:, :, 1:].reshape(n * g, t - 1, 1))
    return torch.cat([first[..., None], rest.view(n, g, t - 1)], dim=-1)


def sid_tokens(trie: SidTrie, sid_ids: torch.Tensor) -> torch.Tensor:
    """[n, G] trie leaf ids -> [n, G, depth + len(trie.end)] token ids (the SID, then its fixed end: the
    suffix tokens, if any, and EOS)."""
    table = torch.tensor([[*s, *trie.end] for s in trie.sids], dtype=torch.long)
    return table[sid_ids]


# ---------------------------------------------------------------- prompts
def rl_prompts(corpus, tokenizer, tasks: RLTasks, n: int | None, seed: int, max_len: int, depth: int,
               end: int = 1) -> list[tuple[list[int], str]]:
    """(prompt token ids, target SID string) of the RL prompt pool: the SID-response SFT tasks drawn at their
    shares (as SFT draws them, with the corpus's prompt text), then a fixed seeded subsample of ``n``; prompts
    cut from the left as in SFT. ``end``: tokens after the SID (suffix + EOS, ``len(trie.end)``)."""
    from tsrec.model.tasks import TASKS, draw, encode_prompt

    suffix = corpus.cfg.prompts.eos_suffix  # the SFT response is SID + suffix; the target is the SID
    pairs = [(prompt, response[:len(response) - len(suffix)] if suffix else response)
             for name in SID_TASKS if getattr(tasks, name) > 0
             for prompt, response in draw(TASKS[name], corpus, getattr(tasks, name), seed)]
    if n is not None and n < len(pairs):
        pairs = [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), n))]
    keep = max_len - depth - end  # room for the response (SID + suffix + EOS), as tsrec.model.tasks.encode_pair
    return [(encode_prompt(tokenizer, prompt)[-keep:], sid) for prompt, sid in pairs]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The prompts' order in one epoch: a pure function of (seed, epoch), so a resume sees the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, policy, ref, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_model

    with atomic_dir(path) as tmp:  # complete or absent
        save_model(policy, str(tmp / "model.safetensors"))
        save_model(ref, str(tmp / "ref.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        write_json(tmp / "state.json", state)


def load_checkpoint(path: Path, policy, ref, optimizer, scheduler) -> dict:
    from safetensors.torch import load_model

    load_model(policy, str(path / "model.safetensors"))
    load_model(ref, str(path / "ref.safetensors"))
    opt = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


@torch.no_grad()
def sync_ref(policy, ref, alpha: float) -> None:
    """TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref."""
    for r, p in zip(ref.parameters(), policy.parameters()):
        r.mul_(1.0 - alpha).add_(p, alpha=alpha)


# ---------------------------------------------------------------- the run
def rl_run(params: dict, ds: str, variant: str, *, seed: int | None = None, base: str | Path | None = None,
           out: str | Path | None = None, callbacks: Sequence[Callable[[int, dict], None]] = ()) -> dict:
    """GRPO from the SFT run of ``variant`` and ``seed`` (default: the top-level ``seed``); writes
    ``<out>/final`` (default runs/<variant>_rl/seed<N>); returns its meta.

    ``callbacks(step, row)`` run after each step (its checkpoint included), e.g. to interrupt a test run.
    """
    from transformers import get_scheduler
    from transformers.trainer_utils import get_last_checkpoint

    from tsrec.model.runs import META, append_row, load_trained, run_dir, save_final, trim_logs
    from tsrec.model.scoring import evaluate_rows, run_index, select_rows
    from tsrec.model.tasks import TaskParams, encode_prompt, load_corpus, seqrec_prompt, tasks_config

    cfg = rl_config(params)
    seed = global_seed(params) if seed is None else int(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = Path(base) if base else run_dir(params, ds, variant, seed)
    out = Path(out) if out else run_dir(params, ds, rl_variant(variant), seed)
    data_dir = Path(section(params, "data", DataConfig).out) / ds
    if not (base / "final" / META).is_file():
        raise TsrecError(f"no trained SFT run of variant {variant!r} here (run `tsrec train`)", file=base / "final")
    ipath = run_index(params, ds, base)
    world = dist.world()
    try:
        device = dist.resolve_device(cfg.device, world)
    except ValueError as exc:
        raise ParamError(str(exc), file=params.get("_path"), field="rl.device") from None
    dist.init(device)
    policy, tokenizer, base_meta = load_trained(base, index_path=ipath, device=str(device))
    index = load_index(ipath)
    # prompts formatted exactly as the base run's SFT saw them (its tasks section: task text, eos_suffix)
    tcfg = dataclasses.replace(tasks_config({"tasks": base_meta["params"].get("tasks")}),
                               tsalign=TaskParams(enabled=False))
    trie = SidTrie.from_index(index, tokenizer, suffix=tcfg.prompts.eos_suffix)
    g = cfg.num_generations
    if len(trie) < g:
        raise ParamError(f"num_generations {g} > the {len(trie)} SIDs of the index", file=params.get("_path"),
                         field="rl.num_generations")
    leaf = {name: i for i, name in enumerate(trie.names)}
    corpus = load_corpus(data_dir, ipath, None, tcfg)
    prompts = rl_prompts(corpus, tokenizer, cfg.tasks, cfg.train_prompts, seed, tcfg.max_len, trie.depth,
                         len(trie.end))
    valid_df = load_split(data_dir, "valid")
    valid_df = valid_df.iloc[select_rows(len(valid_df), cfg.valid_rows, seed)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    precision = resolve_precision(cfg.precision, device.type)

    per_epoch = math.ceil(len(prompts) / cfg.batch_size)
    total = math.ceil(cfg.epochs * per_epoch) if cfg.epochs > 0 else cfg.max_steps
    total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                              num_training_steps=total)

    meta = {**{k: base_meta[k] for k in ("dataset", "index_path", "index_sha256", "backbone", "backbone_id")
               if k in base_meta},
            "variant": rl_variant(variant), "seed": seed,
            "base": {"variant": variant, "seed": base_meta.get("seed"), "run": str(base),
                     "meta_sha256": sha256_file(base / "final" / META),
                     "model_sha256": sha256_file(base / "final" / "model.safetensors")},
            # rl.variants lists runs (the DVC matrix), not a setting of this one: left out, as train.seeds is
            "params": {**base_meta.get("params", {}), "seed": seed,
                       "rl": {k: v for k, v in dataclasses.asdict(cfg).items()
                              if k not in (*MATRIX_KEYS, *PLACEMENT_KEYS)}},
            "inputs_sha256": {s: sha256_file(data_dir / f"{s}.parquet") for s in ("items", "train", "valid")}}
    ckpt_dir, plots = out / "checkpoints", out / "plots"
    same_run = {k: v for k, v in dataclasses.asdict(cfg).items()  # less the keys that leave the numbers as they are
                if k not in (*MATRIX_KEYS, *PLACEMENT_KEYS, "threads", "keep_checkpoints", "eval_batch_size")}
    fingerprint = sha256_json({"rl": same_run, **{k: meta[k] for k in ("base", "inputs_sha256", "index_sha256")}})
    if world.main:
        claim_checkpoints(ckpt_dir, fingerprint)
    dist.barrier()

    # wall and CPU seconds (all threads; on a shared box the wall clock also counts the other jobs)
    totals = {"rollout_s": 0.0, "rollout_cpu_s": 0.0, "rollout_tokens": 0, "update_s": 0.0, "update_cpu_s": 0.0,
              "update_tokens": 0, "eval_s": 0.0, "prompts": 0, "completions": 0}
    resume = get_last_checkpoint(str(ckpt_dir))
    resume = Path(resume) if resume else None
    step = 0
    if resume:
        state = load_checkpoint(resume, policy, ref, optimizer, scheduler)
        step, totals = state["step"], state["totals"]
        log.info("resuming from %s", resume)
    if world.main:
        trim_logs(plots, step if resume else -1, PLOTS)  # a resume keeps its curves up to the checkpoint

    def valid_prompt(history: list[str]) -> list[str]:  # the SFT run's seqrec prompt (its valid loss's too)
        return seqrec_prompt(history, tcfg.prompts)

    def validate(at: int) -> float | None:
        if not world.main:  # process 0 validates, the others wait
            dist.barrier()
            return None
        t0 = time.perf_counter()
        _, summary = evaluate_rows(policy, tokenizer, trie, index, valid_df, valid_prompt, encode_prompt,
                                   beams=cfg.valid_beams, batch_size=cfg.eval_batch_size,
                                   desc=f"valid step {at}", precision=precision)
        totals["eval_s"] += time.perf_counter() - t0
        m = summary["metrics"]
        append_row(plots / "rl_valid.csv", PLOTS["rl_valid.csv"], {"step": at, "NDCG@10": m["NDCG@10"],
                                                                   "HR@10": m["HR@10"]})
        log.info("step %d: valid NDCG@10 %.4f HR@10 %.4f (%d rows)", at, m["NDCG@10"], m["HR@10"], len(valid_df))
        dist.barrier()
        return m["NDCG@10"]

    log.info("%s/%s: GRPO on %d prompts, %d steps of %d prompts x %d completions (%d per epoch), %s on %s x %d",
             ds, rl_variant(variant), len(prompts), total, cfg.batch_size, g, per_epoch, precision, device, world.size)
    session_t0 = time.perf_counter()
    if step == 0:
        validate(0)
    bar = tqdm(total=total, initial=step, desc=f"rl {ds}/{rl_variant(variant)}", unit="step",
               disable=None if world.main else True, dynamic_ncols=True)
    while step < total:
        epoch, k = divmod(step, per_epoch)
        batch = [prompts[i] for i in epoch_order(len(prompts), seed, epoch)[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
        mine = batch[world.rank::world.size]  # this process's share (all of it for one process)
        n_tokens = sum(len(p) for p, _ in batch) + len(batch) * g * (trie.depth + len(trie.end))

        t0, c0 = time.perf_counter(), time.process_time()  # rollouts: beam search with the current policy
        policy.eval()
        if mine:
            ids, mask = (t.to(device) for t in left_pad([p for p, _ in mine], pad_id))
            with autocast(precision, device.type):
                res = beam_search(policy, ids, mask, trie, g)
            rollouts = res.sid_ids
            if bool((rollouts < 0).any()):
                raise TsrecError("beam search returned fewer than num_generations SIDs")
            rewards, parts = zip(*(group_rewards(row, leaf[sid], cfg.reward_type)
                                   for row, (_, sid) in zip(rollouts.tolist(), mine)))
            rewards = torch.tensor(rewards)
            advantages = group_advantages(rewards).to(device)
            completions = sid_tokens(trie, rollouts.cpu()).to(device)
        t1, c1 = time.perf_counter(), time.process_time()

        policy.train()  # update: reference scores, policy scores with gradients, one optimizer step
        if mine:
            with autocast(precision, device.type):
                with torch.no_grad():
                    ref_logp = completion_logps(ref, ids, mask, completions)
                logp = completion_logps(policy, ids, mask, completions)
                loss, kl = grpo_loss(logp, ref_logp, advantages, cfg.beta)
            # N processes: each loss weighted by its share of the batch, gradients summed = the global mean's
            (loss * (len(mine) / len(batch)) if world.distributed else loss).backward()
        if world.distributed:
            dist.all_reduce_grads(policy.parameters())
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if cfg.sync_ref_model and step % cfg.ref_sync_steps == 0:
            sync_ref(policy, ref, cfg.ref_mixup_alpha)
        t2, c2 = time.perf_counter(), time.process_time()

        totals["rollout_s"] += t1 - t0
        totals["update_s"] += t2 - t1
        totals["rollout_cpu_s"] += c1 - c0
        totals["update_cpu_s"] += c2 - c1
        totals["rollout_tokens"] += n_tokens
        totals["update_tokens"] += n_tokens
        totals["prompts"] += len(batch)
        totals["completions"] += len(batch) * g
        if world.distributed:
            row = {"step": step, "epoch": round(step / per_epoch, 4), "learning_rate": lr,
                   **_global_stats(mine and (loss, kl, rewards, parts), len(batch), device)}
        else:
            row = {"step": step, "epoch": round(step / per_epoch, 4), "learning_rate": lr, "loss": loss.item(),
                   "kl": kl.item(), "reward": rewards.mean().item(),
                   "reward_rule": sum(map(sum, (p["rule"] for p in parts))) / rewards.numel(),
                   "reward_ranking": sum(map(sum, (p["ranking"] for p in parts))) / rewards.numel(),
                   "reward_std": rewards.std(-1).mean().item(),
                   "target_in_group": sum(1.0 in p["rule"] for p in parts) / len(parts)}
        if world.main:
            append_row(plots / "rl.csv", PLOTS["rl.csv"], row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.2e}")
        if step % cfg.eval_steps == 0 or step == total:
            if world.distributed:
                dist.check_in_sync(policy, device)
            validate(step)
            if world.main:
                save_checkpoint(ckpt_dir / f"checkpoint-{step}", policy, ref, optimizer, scheduler,
                                {"step": step, "totals": totals})
                for old in ckpt_dir.glob("checkpoint-*"):
                    if old.name != f"checkpoint-{step}":
                        shutil.rmtree(old, ignore_errors=True)
            dist.barrier()
        for cb in callbacks:
            cb(step, row)
    bar.close()
    wall = time.perf_counter() - session_t0

    meta["rl"] = {
        "steps": step, "prompts_in_pool": len(prompts), "steps_per_epoch": per_epoch, "epochs": round(step / per_epoch, 4),
        "precision": {"requested": cfg.precision, "resolved": precision}, "resumed_from": resume and resume.name,
        "session_wall_s": round(wall, 1), **{k: round(v, 1) if isinstance(v, float) else v for k, v in totals.items()},
        # tokens = prompt tokens (no padding) + completion tokens (G x (SID + suffix + EOS)) of the step's prompts;
        # rollouts = beam search; update = reference + policy scoring, backward, optimizer step
        "rollout_tokens_per_s": round(totals["rollout_tokens"] / max(totals["rollout_s"], 1e-9), 1),
        "update_tokens_per_s": round(totals["update_tokens"] / max(totals["update_s"], 1e-9), 1),
        "rollout_prompts_per_s": round(totals["prompts"] / max(totals["rollout_s"], 1e-9), 2),
        "s_per_step": round((totals["rollout_s"] + totals["update_s"]) / max(step, 1), 2),
        "cpu_s_per_step": round((totals["rollout_cpu_s"] + totals["update_cpu_s"]) / max(step, 1), 2),
        "torch_threads": torch.get_num_threads(), "device": str(device), "processes": world.size,
        "machine": pinning.record(pinning.config(params), file=params.get("_path")),
    }
    if world.main:
        save_final(policy, tokenizer, meta, out / "final")
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    dist.barrier()
    return meta


def _global_stats(local, n_prompts: int, device) -> dict[str, float]:
    """The step's logged row over all processes: ``local`` = (loss, kl, rewards [n, G], reward parts) of this
    process's share, or a falsy value for an empty share; ``n_prompts``: the global batch."""
    if local:
        loss, kl, rewards, parts = local
        n = rewards.shape[0]
        sums = [loss.item() * n, kl.item() * n, rewards.sum().item(), sum(map(sum, (p["rule"] for p in parts))),
                sum(map(sum, (p["ranking"] for p in parts))), rewards.std(-1).sum().item(),
                sum(1.0 in p["rule"] for p in parts), rewards.numel()]
    else:
        sums = [0.0] * 8
    loss, kl, reward, rule, ranking, std, hit, numel = dist.all_reduce_sum(sums, device)
    return {"loss": loss / n_prompts, "kl": kl / n_prompts, "reward": reward / numel, "reward_rule": rule / numel,
            "reward_ranking": ranking / numel, "reward_std": std / n_prompts, "target_in_group": hit / n_prompts}


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True,
                   help="the SFT variant to start from (writes runs/<variant>_rl/seed<N>)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the SFT run to start from and of this run (default: the top-level seed)")
    p.add_argument("--base-dir", default=None,
                   help="SFT run folder (default <train.out>/<DS>/runs/<variant>/seed<N>)")
    p.add_argument("--out", default=None, help="run folder (default <train.out>/<DS>/runs/<variant>_rl/seed<N>)")
    p.add_argument("--results", default="results",
                   help="copy the curves and the summary to <results>/<DS>/<variant>_rl/seed<N>/")


def run(args, params: dict) -> None:
    cfg = rl_config(params)
    if args.variant not in cfg.variants:
        raise ParamError(f"variant {args.variant!r} is not in rl.variants {cfg.variants}", file=params.get("_path"),
                         field="rl.variants")
    name = rl_variant(args.variant)
    seed = global_seed(params) if args.seed is None else args.seed
    from tsrec.model.runs import run_dir

    meta = rl_run(params, args.dataset, args.variant, seed=seed, base=args.base_dir, out=args.out)
    if not dist.world().main:
        return
    out = Path(args.out) if args.out else run_dir(params, args.dataset, name, seed)
    dest = results_dir(args.results, args.dataset, name, seed)
    dest.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        shutil.copyfile(out / "plots" / plot, dest / plot)
    summary = {"command": "tsrec " + " ".join(sys.argv[1:]), "params_file": params.get("_path"),
               **{k: meta[k] for k in ("dataset", "variant", "seed", "backbone_id", "index_sha256", "base", "rl")},
               "params": meta["params"]["rl"]}
    write_json(dest / "rl_summary.json", summary)
    log.info("%s/%s: %s", args.dataset, name, json.dumps(meta["rl"]))
