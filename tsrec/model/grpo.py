"""GRPO after SFT: the library of the RL stage (``tsrec rl``, tsrec.commands.rl), as MiniOneRec and the TS-Rec
authors' code do it (``train/rl.py``, ``train/trainer/minionerec_trainer.py``, ``scripts/rl.sh``).

The same shape as SFT (tsrec.model.sft): a typed config (``RLConfig``, the ``rl`` section), a prompt set
(``load_prompt_set``: the RL pool rendered by the task registry with the SFT run's prompt text, the valid rows,
the SID trie), a rollout function (``rollout``), a loss (``grpo_loss`` over ``completion_logps``) and a loop
(``train`` -> ``grpo_step``) with callbacks (``CurveLog``: the curves and the progress bar;
``ValidateAndCheckpoint``: valid NDCG@10 and a resumable checkpoint; the caller's ``(step, row)`` callables).
``train`` takes an ``RLRun`` (paths, seed, device, resolved by the command), never the params dict.

One optimizer step, for ``batch_size`` prompts:

  rollouts    the project's constrained beam search (``tsrec.lm.decoding.beam_search``): per prompt the
              ``num_generations`` (16) best distinct SIDs + the SFT run's ``tasks.prompts.eos_suffix`` + EOS,
              best first (authors: HF beam search over the trie, num_beams = num_return_sequences = 16,
              length_penalty 0, temperature 1);
  rewards     ``reward_type: ranking`` = rule (``rule_reward``) + ranking (``ranking_reward``);
  advantages  (r - group mean) / (group std + 1e-4), per prompt (``group_advantages``);
  loss        ``grpo_loss``: one update per rollout batch, so the policy ratio is 1 in value and only its
              gradient counts; KL to the reference model with the k3 estimator, weight beta;
  reference   a frozen copy of the SFT model, mixed towards the policy every ``ref_sync_steps`` steps
              (``sync_ref``, TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref).

Scoring is cheap on a CPU: the policy and reference log-probs of a prompt's G completions come from ONE
prefill of the prompt, whose KV cache the G completions then share (``completion_logps``, the decoder's
shared-prefix attention, with gradients through it).

TRL. The GRPO maths here are TRL's ``GRPOTrainer`` with ``loss_type="grpo"``, ``num_iterations=1``,
``scale_rewards="group"``, ``sync_ref_model=True`` (read in trl main, 2026-07): the group advantages
``(r - mean) / (std + 1e-4)`` with an unbiased std (its ``nanstd``), the k3 KL, the per-token loss averaged over a
completion then over completions (the clip is inactive at ratio 1), and ``SyncRefModelCallback``'s mix. The
trainer itself is not used (nor installed: it would be a new dependency), because it lacks:
  - constrained beam-search rollouts as the group. Its generation samples ONE completion per prompt row (the
    RepeatSampler repeats each prompt ``num_generations`` times; ``generate()`` with ``do_sample``); nothing in
    GRPOConfig returns a prompt's G best distinct beams as its group, and a trie constraint
    (``prefix_allowed_tokens_fn`` / a logits processor) cannot travel in ``generation_kwargs`` (a GenerationConfig
    holds no callable). Its experimental ``rollout_func(prompts, trainer)`` could host our beam search (one
    search per G repeated rows, beam i to row i), but it is marked experimental and may change without notice;
  - the beam position in the reward: the ranking reward needs each completion's rank in its group; TRL reward
    functions see the flat batch (a position would be recovered as row index mod G, fragile to any reorder);
  - one prefill per prompt: ``_get_per_token_logps_and_entropies`` scores one prompt+completion row per
    completion (G prefills of the same prompt); here the G completions share the prompt's KV cache;
  - byte-identical resume: Trainer checkpoints do not hold the reference model that SyncRefModelCallback mixes
    (a resumed run would restart from another reference), and its batches come from the RepeatSampler, not from
    ``epoch_order(seed, epoch)``; here a checkpoint holds policy, reference, optimizer and scheduler;
  - CPU multi-process as one process: here each torchrun process takes every N-th prompt, scales its loss by
    its share and the gradients are summed (gloo) before clipping, so N processes step as 1 (TRL: accelerate).

Device and processes: ``rl.device`` (auto | cpu | cuda | cuda:N) holds the policy, the reference, rollouts and
the update. Under ``torchrun`` each process takes every N-th prompt of the step's batch (the global batch stays
``batch_size`` prompts), scales its loss by its share, and the gradients are summed over the processes before
clipping and the optimizer step, so N processes step as 1 process would; process 0 validates and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from tqdm import tqdm

from tsrec.core import distributed as dist
from tsrec.core import pinning
from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, claim_checkpoints, sha256_file, sha256_json, write_json
from tsrec.core.precision import Precision, autocast, check_device
from tsrec.core.precision import resolve as resolve_precision
from tsrec.data.datasets import load_index, load_split
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
from tsrec.model import scoring
from tsrec.model.runs import META, append_row, load_trained, save_final, trim_logs
from tsrec.model.tasks import (
    TASKS,
    PromptsConfig,
    TaskParams,
    draw,
    encode_prompt,
    load_corpus,
    seqrec_prompt,
    tasks_config,
)

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


# ---------------------------------------------------------------- config
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
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific", "Office_Products"])
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


@dataclasses.dataclass(frozen=True)
class RLRun:
    """Where one RL run reads and writes, resolved by the command: the SFT run ``base`` of ``variant`` and
    ``seed`` it starts from, its own folder ``out`` (final/, checkpoints/, plots/), the dataset folder, the index
    the SFT run was trained with, the device, and the params file named in errors."""
    dataset: str
    variant: str
    seed: int
    base: Path
    out: Path
    data_dir: Path
    index_path: Path
    device: torch.device
    params_file: str | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.out / "plots"


def require_sft_run(base: Path, variant: str) -> None:
    """One clear error when ``base`` holds no trained SFT run."""
    if not (base / "final" / META).is_file():
        raise TsrecError(f"no trained SFT run of variant {variant!r} here (run `tsrec train`)", file=base / "final")


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


# ---------------------------------------------------------------- the loss
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


# ---------------------------------------------------------------- the prompt set
def rl_prompts(corpus, tokenizer, tasks: RLTasks, n: int | None, seed: int, max_len: int, depth: int,
               end: int = 1) -> list[tuple[list[int], str]]:
    """(prompt token ids, target SID string) of the RL prompt pool: the SID-response SFT tasks drawn at their
    shares (as SFT draws them, with the corpus's prompt text), then a fixed seeded subsample of ``n``; prompts
    cut from the left as in SFT. ``end``: tokens after the SID (suffix + EOS, ``len(trie.end)``)."""
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


@dataclasses.dataclass
class PromptSet:
    """What an RL run draws from: the RL pool (prompt token ids, target SID), the valid rows, the SID trie (its
    end: the SFT run's suffix + EOS) with each SID's leaf id, the index, the SFT run's prompt text, the pad id."""
    train: list[tuple[list[int], str]]
    valid: pd.DataFrame
    trie: SidTrie
    leaf: dict[str, int]
    index: dict[int, list[str]]
    prompts: PromptsConfig
    pad_id: int

    def batch(self, step: int, batch_size: int, seed: int, per_epoch: int) -> list[tuple[list[int], str]]:
        """The prompts of optimizer step ``step`` (0-based): a slice of its epoch's ``epoch_order``."""
        epoch, k = divmod(step, per_epoch)
        return [self.train[i] for i in epoch_order(len(self.train), seed, epoch)[k * batch_size:(k + 1) * batch_size]]


def load_prompt_set(run: RLRun, cfg: RLConfig, tokenizer, base_meta: dict) -> PromptSet:
    """The prompt set of ``run``, formatted exactly as its SFT run saw them (the ``tasks`` section of its meta:
    task text, eos_suffix); ParamError if the index holds fewer SIDs than ``num_generations``."""
    index = load_index(run.index_path)
    tcfg = dataclasses.replace(tasks_config({"tasks": base_meta["params"].get("tasks")}),
                               tsalign=TaskParams(enabled=False))
    trie = SidTrie.from_index(index, tokenizer, suffix=tcfg.prompts.eos_suffix)
    if len(trie) < cfg.num_generations:
        raise ParamError(f"num_generations {cfg.num_generations} > the {len(trie)} SIDs of the index",
                         file=run.params_file, field="rl.num_generations")
    corpus = load_corpus(run.data_dir, run.index_path, None, tcfg)
    train = rl_prompts(corpus, tokenizer, cfg.tasks, cfg.train_prompts, run.seed, tcfg.max_len, trie.depth,
                       len(trie.end))
    valid = load_split(run.data_dir, "valid")
    valid = valid.iloc[scoring.select_rows(len(valid), cfg.valid_rows, run.seed)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PromptSet(train, valid, trie, {name: i for i, name in enumerate(trie.names)}, index, tcfg.prompts, pad_id)


# ---------------------------------------------------------------- rollout
@dataclasses.dataclass
class Rollout:
    """One step's rollouts for a share of its prompts: the left-padded prompts, the G completions per prompt
    (SID + end tokens, best beam first), their rewards (and both reward parts) and advantages."""
    input_ids: torch.Tensor     # [n, L]
    attention_mask: torch.Tensor
    completions: torch.Tensor   # [n, G, T]
    rewards: torch.Tensor       # [n, G], on the CPU
    parts: list[dict[str, list[float]]]
    advantages: torch.Tensor    # [n, G], on the device


def rollout(policy, batch: list[tuple[list[int], str]], data: PromptSet, g: int, reward_type: str,
            device: torch.device, precision: str) -> Rollout:
    """Constrained beam search with the current policy: per prompt its ``g`` best distinct SIDs (the group),
    rewarded against the prompt's target SID."""
    ids, mask = (t.to(device) for t in left_pad([p for p, _ in batch], data.pad_id))
    with autocast(precision, device.type):
        res = beam_search(policy, ids, mask, data.trie, g)
    sids = res.sid_ids
    if bool((sids < 0).any()):
        raise TsrecError("beam search returned fewer than num_generations SIDs")
    rewards, parts = zip(*(group_rewards(row, data.leaf[sid], reward_type)
                           for row, (_, sid) in zip(sids.tolist(), batch)))
    rewards = torch.tensor(rewards)
    advantages = group_advantages(rewards).to(device)
    completions = sid_tokens(data.trie, sids.cpu()).to(device)
    return Rollout(ids, mask, completions, rewards, list(parts), advantages)


# ---------------------------------------------------------------- update
def policy_loss(policy, ref, r: Rollout, beta: float, precision: str, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, KL) of the rollouts: reference scores without gradients, policy scores with them."""
    with autocast(precision, device.type):
        with torch.no_grad():
            ref_logp = completion_logps(ref, r.input_ids, r.attention_mask, r.completions)
        logp = completion_logps(policy, r.input_ids, r.attention_mask, r.completions)
        return grpo_loss(logp, ref_logp, r.advantages, beta)


def optimizer_step(policy, optimizer, scheduler, max_grad_norm: float, distributed: bool) -> float:
    """Sum the gradients over the processes, clip, step; returns the learning rate the step used."""
    if distributed:
        dist.all_reduce_grads(policy.parameters())
    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


@torch.no_grad()
def sync_ref(policy, ref, alpha: float) -> None:
    """TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref."""
    for r, p in zip(ref.parameters(), policy.parameters()):
        r.mul_(1.0 - alpha).add_(p, alpha=alpha)


def build_optimizer(policy, cfg: RLConfig, total: int):
    """(AdamW, the ``cfg.schedule`` scheduler with ``warmup_ratio`` of ``total`` steps of warm-up)."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler


def schedule_steps(n_prompts: int, cfg: RLConfig) -> tuple[int, int]:
    """(steps per epoch, total steps): ``epochs`` over the pool, capped by ``max_steps`` > 0."""
    per_epoch = math.ceil(n_prompts / cfg.batch_size)
    total = math.ceil(cfg.epochs * per_epoch) if cfg.epochs > 0 else cfg.max_steps
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps > 0 else total


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


# ---------------------------------------------------------------- the run record
def run_meta(run: RLRun, cfg: RLConfig, base_meta: dict) -> dict:
    """The RL run's meta (final/tsrec_meta.json): the SFT run's identity, this run's settings and inputs."""
    return {**{k: base_meta[k] for k in ("dataset", "index_path", "index_sha256", "backbone", "backbone_id")
               if k in base_meta},
            "variant": rl_variant(run.variant), "seed": run.seed,
            "base": {"variant": run.variant, "seed": base_meta.get("seed"), "run": str(run.base),
                     "meta_sha256": sha256_file(run.base / "final" / META),
                     "model_sha256": sha256_file(run.base / "final" / "model.safetensors")},
            # rl.variants lists runs (the DVC matrix), not a setting of this one: left out, as train.seeds is
            "params": {**base_meta.get("params", {}), "seed": run.seed,
                       "rl": {k: v for k, v in dataclasses.asdict(cfg).items()
                              if k not in (*MATRIX_KEYS, *PLACEMENT_KEYS)}},
            "inputs_sha256": {s: sha256_file(run.data_dir / f"{s}.parquet") for s in ("items", "train", "valid")}}


def run_fingerprint(cfg: RLConfig, meta: dict) -> str:
    """What a checkpoint must match to be resumed: the settings that change the numbers and the inputs."""
    same_run = {k: v for k, v in dataclasses.asdict(cfg).items()  # less the keys that leave the numbers as they are
                if k not in (*MATRIX_KEYS, *PLACEMENT_KEYS, "threads", "keep_checkpoints", "eval_batch_size")}
    return sha256_json({"rl": same_run, **{k: meta[k] for k in ("base", "inputs_sha256", "index_sha256")}})


def new_totals() -> dict:
    """Wall and CPU seconds (all threads; on a shared box the wall clock also counts the other jobs), tokens,
    prompts and completions of the run so far (kept in checkpoints)."""
    return {"rollout_s": 0.0, "rollout_cpu_s": 0.0, "rollout_tokens": 0, "update_s": 0.0, "update_cpu_s": 0.0,
            "update_tokens": 0, "eval_s": 0.0, "prompts": 0, "completions": 0}


def run_record(s: Session, wall: float, repro: pinning.ReproConfig | None) -> dict:
    """meta["rl"]: steps, precision, resume point, timings and throughput, device, processes, the machine."""
    t, step, cfg = s.totals, s.step, s.cfg
    return {
        "steps": step, "prompts_in_pool": len(s.data.train), "steps_per_epoch": s.per_epoch,
        "epochs": round(step / s.per_epoch, 4),
        "precision": {"requested": cfg.precision, "resolved": s.precision},
        "resumed_from": s.resumed_from and s.resumed_from.name,
        "session_wall_s": round(wall, 1), **{k: round(v, 1) if isinstance(v, float) else v for k, v in t.items()},
        # tokens = prompt tokens (no padding) + completion tokens (G x (SID + suffix + EOS)) of the step's prompts;
        # rollouts = beam search; update = reference + policy scoring, backward, optimizer step
        "rollout_tokens_per_s": round(t["rollout_tokens"] / max(t["rollout_s"], 1e-9), 1),
        "update_tokens_per_s": round(t["update_tokens"] / max(t["update_s"], 1e-9), 1),
        "rollout_prompts_per_s": round(t["prompts"] / max(t["rollout_s"], 1e-9), 2),
        "s_per_step": round((t["rollout_s"] + t["update_s"]) / max(step, 1), 2),
        "cpu_s_per_step": round((t["rollout_cpu_s"] + t["update_cpu_s"]) / max(step, 1), 2),
        "torch_threads": torch.get_num_threads(), "device": str(s.run.device), "processes": s.world.size,
        "machine": pinning.record(repro, file=s.run.params_file),
    }


# ---------------------------------------------------------------- the loop
@dataclasses.dataclass
class Session:
    """One RL run in progress: what the loop, its callbacks and the run record share."""
    run: RLRun
    cfg: RLConfig
    world: dist.World
    precision: str
    policy: Any
    ref: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    data: PromptSet
    per_epoch: int
    total: int
    meta: dict
    step: int = 0
    totals: dict = dataclasses.field(default_factory=new_totals)
    resumed_from: Path | None = None


def setup(run: RLRun, cfg: RLConfig) -> Session:
    """Load the SFT run as policy and reference, the prompt set, the optimizer; claim the checkpoint folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = dist.world()
    dist.init(run.device)
    policy, tokenizer, base_meta = load_trained(run.base, index_path=run.index_path, device=str(run.device))
    data = load_prompt_set(run, cfg, tokenizer, base_meta)
    precision = resolve_precision(cfg.precision, run.device.type)
    per_epoch, total = schedule_steps(len(data.train), cfg)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer, scheduler = build_optimizer(policy, cfg, total)
    meta = run_meta(run, cfg, base_meta)
    if world.main:
        claim_checkpoints(run.ckpt_dir, run_fingerprint(cfg, meta))
    dist.barrier()
    return Session(run, cfg, world, precision, policy, ref, tokenizer, optimizer, scheduler, data, per_epoch, total,
                   meta)


def resume(s: Session) -> None:
    """Continue from the last checkpoint of ``s.run.ckpt_dir``, if any: policy, reference, optimizer, step."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(s.run.ckpt_dir))
    if last:
        s.resumed_from = Path(last)
        state = load_checkpoint(s.resumed_from, s.policy, s.ref, s.optimizer, s.scheduler)
        s.step, s.totals = state["step"], state["totals"]
        log.info("resuming from %s", s.resumed_from)


def grpo_step(s: Session) -> dict:
    """One optimizer step (rollouts, update, reference mix); returns its logged row over all processes."""
    cfg, world, device, g = s.cfg, s.world, s.run.device, s.cfg.num_generations
    batch = s.data.batch(s.step, cfg.batch_size, s.run.seed, s.per_epoch)
    mine = batch[world.rank::world.size]  # this process's share (all of it for one process)
    n_tokens = sum(len(p) for p, _ in batch) + len(batch) * g * (s.data.trie.depth + len(s.data.trie.end))

    t0, c0 = time.perf_counter(), time.process_time()  # rollouts: beam search with the current policy
    s.policy.eval()
    r = rollout(s.policy, mine, s.data, g, cfg.reward_type, device, s.precision) if mine else None
    t1, c1 = time.perf_counter(), time.process_time()

    s.policy.train()  # update: reference scores, policy scores with gradients, one optimizer step
    if r is not None:
        loss, kl = policy_loss(s.policy, s.ref, r, cfg.beta, s.precision, device)
        # N processes: each loss weighted by its share of the batch, gradients summed = the global mean's
        (loss * (len(mine) / len(batch)) if world.distributed else loss).backward()
    lr = optimizer_step(s.policy, s.optimizer, s.scheduler, cfg.max_grad_norm, world.distributed)
    s.step += 1
    if cfg.sync_ref_model and s.step % cfg.ref_sync_steps == 0:
        sync_ref(s.policy, s.ref, cfg.ref_mixup_alpha)
    t2, c2 = time.perf_counter(), time.process_time()

    for key, value in (("rollout_s", t1 - t0), ("update_s", t2 - t1), ("rollout_cpu_s", c1 - c0),
                       ("update_cpu_s", c2 - c1), ("rollout_tokens", n_tokens), ("update_tokens", n_tokens),
                       ("prompts", len(batch)), ("completions", len(batch) * g)):
        s.totals[key] += value
    row = {"step": s.step, "epoch": round(s.step / s.per_epoch, 4), "learning_rate": lr}
    if world.distributed:
        return {**row, **_global_stats(r and (loss, kl, r.rewards, r.parts), len(batch), device)}
    return {**row, **_local_stats(loss, kl, r.rewards, r.parts)}


def _local_stats(loss, kl, rewards: torch.Tensor, parts: list[dict]) -> dict[str, float]:
    """The step's logged numbers of one process that holds the whole batch."""
    return {"loss": loss.item(), "kl": kl.item(), "reward": rewards.mean().item(),
            "reward_rule": sum(map(sum, (p["rule"] for p in parts))) / rewards.numel(),
            "reward_ranking": sum(map(sum, (p["ranking"] for p in parts))) / rewards.numel(),
            "reward_std": rewards.std(-1).mean().item(),
            "target_in_group": sum(1.0 in p["rule"] for p in parts) / len(parts)}


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


def validate(s: Session, at: int) -> float | None:
    """Valid NDCG@10 / HR@10 of the policy on the fixed valid rows (process 0; the others wait): a row of
    ``rl_valid.csv``; returns NDCG@10 (None on the other processes)."""
    if not s.world.main:
        dist.barrier()
        return None
    t0 = time.perf_counter()
    # the SFT run's seqrec prompt (its valid loss's too)
    _, summary = scoring.evaluate_rows(s.policy, s.tokenizer, s.data.trie, s.data.index, s.data.valid,
                                       functools.partial(seqrec_prompt, prompts=s.data.prompts), encode_prompt,
                                       beams=s.cfg.valid_beams, batch_size=s.cfg.eval_batch_size,
                                       desc=f"valid step {at}", precision=s.precision)
    s.totals["eval_s"] += time.perf_counter() - t0
    m = summary["metrics"]
    append_row(s.run.plots / "rl_valid.csv", PLOTS["rl_valid.csv"], {"step": at, "NDCG@10": m["NDCG@10"],
                                                                     "HR@10": m["HR@10"]})
    log.info("step %d: valid NDCG@10 %.4f HR@10 %.4f (%d rows)", at, m["NDCG@10"], m["HR@10"], len(s.data.valid))
    dist.barrier()
    return m["NDCG@10"]


class Callback:
    """A hook of the GRPO loop (a transformers TrainerCallback in miniature)."""

    def on_train_begin(self, s: Session) -> None:
        pass

    def on_step_end(self, s: Session, row: dict) -> None:
        pass

    def on_train_end(self, s: Session) -> None:
        pass


class CurveLog(Callback):
    """``plots/rl.csv`` (one row per step, process 0; a resume cuts both curves back to its checkpoint) and the
    progress bar."""

    def on_train_begin(self, s: Session) -> None:
        if s.world.main:  # a resume keeps its curves up to the checkpoint
            trim_logs(s.run.plots, s.step if s.resumed_from else -1, PLOTS)
        self.bar = tqdm(total=s.total, initial=s.step, desc=f"rl {s.run.dataset}/{rl_variant(s.run.variant)}",
                        unit="step", disable=None if s.world.main else True, dynamic_ncols=True)

    def on_step_end(self, s: Session, row: dict) -> None:
        if s.world.main:
            append_row(s.run.plots / "rl.csv", PLOTS["rl.csv"], row)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.2e}")

    def on_train_end(self, s: Session) -> None:
        self.bar.close()


class ValidateAndCheckpoint(Callback):
    """Validation at step 0 (a fresh run), every ``eval_steps`` and at the end, each followed by a checkpoint
    (policy, reference, optimizer, scheduler, step, totals) that replaces the previous one."""

    def on_train_begin(self, s: Session) -> None:
        if s.step == 0:
            validate(s, 0)

    def on_step_end(self, s: Session, row: dict) -> None:
        if s.step % s.cfg.eval_steps and s.step != s.total:
            return
        if s.world.distributed:
            dist.check_in_sync(s.policy, s.run.device)
        validate(s, s.step)
        if s.world.main:
            ckpt = s.run.ckpt_dir
            save_checkpoint(ckpt / f"checkpoint-{s.step}", s.policy, s.ref, s.optimizer, s.scheduler,
                            {"step": s.step, "totals": s.totals})
            for old in ckpt.glob("checkpoint-*"):
                if old.name != f"checkpoint-{s.step}":
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()


class StepFunction(Callback):
    """A caller's ``fn(step, row)``, run after each step (its checkpoint included), e.g. to stop a test run."""

    def __init__(self, fn: Callable[[int, dict], None]):
        self.fn = fn

    def on_step_end(self, s: Session, row: dict) -> None:
        self.fn(s.step, row)


def loop(s: Session, callbacks: Sequence[Callback]) -> float:
    """Step until ``s.total``, calling the callbacks; returns this session's wall seconds."""
    log.info("%s/%s: GRPO on %d prompts, %d steps of %d prompts x %d completions (%d per epoch), %s on %s x %d",
             s.run.dataset, rl_variant(s.run.variant), len(s.data.train), s.total, s.cfg.batch_size,
             s.cfg.num_generations, s.per_epoch, s.precision, s.run.device, s.world.size)
    t0 = time.perf_counter()
    for cb in callbacks:
        cb.on_train_begin(s)
    while s.step < s.total:
        row = grpo_step(s)
        for cb in callbacks:
            cb.on_step_end(s, row)
    for cb in callbacks:
        cb.on_train_end(s)
    return time.perf_counter() - t0


def train(run: RLRun, cfg: RLConfig, *, repro: pinning.ReproConfig | None = None,
          callbacks: Sequence[Callback | Callable[[int, dict], None]] = ()) -> dict:
    """GRPO from the SFT run ``run.base``: writes ``run.out``/final (and, while it runs, checkpoints/ and
    plots/); returns its meta. ``repro``: the pinning the machine record checks (tsrec.core.pinning).
    ``callbacks``: ``Callback`` objects or ``fn(step, row)``, run after the built-in ones (curves, validation
    and checkpoint), e.g. to interrupt a test run."""
    s = setup(run, cfg)
    resume(s)
    extra = [cb if isinstance(cb, Callback) else StepFunction(cb) for cb in callbacks]
    wall = loop(s, [CurveLog(), ValidateAndCheckpoint(), *extra])
    s.meta["rl"] = run_record(s, wall, repro)
    if s.world.main:
        save_final(s.policy, s.tokenizer, s.meta, run.out / "final")
        if not cfg.keep_checkpoints:
            shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    dist.barrier()
    return s.meta
