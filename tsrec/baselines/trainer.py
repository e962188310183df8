"""Shared data view, trainer and evaluator for every baseline (RecBole's shape: models only define the net).

Data: the canonical ``data/<DS>/{train,valid,test}.parquet`` rows (history oldest first, <= 10 items; target).
Training examples: every (prefix -> next item) pair inside ``history + [target]`` of each train row, de-duplicated
per user. On the reconstructed split every such pair is already a train row (rows are the prefixes of one
sequence per user), so the expansion adds nothing there but keeps the pair set right on sliding-window splits.

Evaluation: full ranking. A recommender returns, per row, its top-K list of keys (item ids, or SIDs for
generative models); ``tsrec.metrics`` scores the 0-based rank of the target key in it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tsrec.data import load_items, load_split
from tsrec.metrics import from_ranks, ranks

log = logging.getLogger(__name__)

PAD = 0  # item index 0 is padding; item i of items.parquet (row order) is index i + 1
VALID_METRIC = "NDCG@10"


@dataclasses.dataclass
class TrainConfig:
    """Optimiser and early stopping, shared by every learned baseline (each may override per model)."""

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 60
    patience: int = 5  # evaluations without a better valid NDCG@10 before stopping
    min_epochs: int = 10  # no early stop before this (the first epochs sit on a popularity plateau)
    eval_every: int = 1  # epochs between valid evaluations
    max_minutes: float = 5.0  # wall-clock cap per config (recorded when hit)
    grad_clip: float = 5.0

    def validate(self) -> None:
        for name in ("batch_size", "max_epochs", "patience", "eval_every", "min_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_minutes <= 0 or self.grad_clip <= 0:
            raise ValueError("lr, max_minutes and grad_clip must be > 0, weight_decay >= 0")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_pairs(train: pd.DataFrame, max_len: int) -> list[tuple[list[int], int]]:
    """All (prefix -> next) pairs inside each train row's ``history + [target]``, once per user."""
    seen: set[tuple[str, tuple[int, ...], int]] = set()
    pairs = []
    for user, hist, target in zip(train["user_id"], train["history"], train["target"]):
        seq = [*hist, int(target)]
        for j in range(1, len(seq)):
            ctx = tuple(seq[max(0, j - max_len):j])
            key = (user, ctx, seq[j])
            if key not in seen:
                seen.add(key)
                pairs.append((list(ctx), seq[j]))
    return pairs


class SeqData:
    """One dataset, item ids mapped to dense indices 1..n_items (0 = padding)."""

    def __init__(self, data_dir: str | Path, max_len: int = 10, max_rows: int | None = None):
        self.dir = Path(data_dir)
        self.max_len = max_len
        items = load_items(self.dir)
        self.item_ids = items["item_id"].astype(int).tolist()
        self.index_of = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.n_items = len(self.item_ids)
        self.splits = {s: load_split(self.dir, s) for s in ("train", "valid", "test")}
        if max_rows:  # smoke runs only; recorded in the result file
            self.splits = {s: df.head(max_rows) for s, df in self.splits.items()}
        self.pairs = train_pairs(self.splits["train"], max_len)
        log.info("%s: %d items, %d train rows -> %d (prefix, next) pairs", self.dir.name, self.n_items,
                 len(self.splits["train"]), len(self.pairs))

    def rows(self, split: str) -> tuple[list[list[int]], list[int]]:
        df = self.splits[split]
        return [list(h)[-self.max_len:] for h in df["history"]], [int(t) for t in df["target"]]

    def encode(self, histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded index tensor [B, max_len] and lengths [B] (the last max_len items kept)."""
        seq = torch.zeros(len(histories), self.max_len, dtype=torch.long)
        lengths = torch.zeros(len(histories), dtype=torch.long)
        for r, hist in enumerate(histories):
            idx = [self.index_of[i] for i in hist[-self.max_len:]]
            if not idx:
                raise ValueError("empty history")
            seq[r, :len(idx)] = torch.tensor(idx)
            lengths[r] = len(idx)
        return seq, lengths

    def batches(self, batch_size: int, rng: random.Random) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = list(range(len(self.pairs)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = [self.pairs[i] for i in order[start:start + batch_size]]
            seq, lengths = self.encode([c for c, _ in chunk])
            target = torch.tensor([self.index_of[t] - 1 for _, t in chunk])  # class = index - 1 (no pad class)
            yield seq, lengths, target


def evaluate(recommend: Callable[[list[list[int]], int], list[list[Hashable]]], histories: list[list[int]],
             target_keys: list[Hashable], k: int = 20, batch_size: int = 512) -> tuple[dict[str, float], list[int]]:
    """HR/NDCG@{1,3,5,10,20} of ``recommend(histories_batch, k)`` top-k lists; returns (metrics, row ranks)."""
    row_ranks: list[int] = []
    for start in range(0, len(histories), batch_size):
        lists = recommend(histories[start:start + batch_size], k)
        row_ranks.extend(ranks(lists, target_keys[start:start + batch_size]))
    return from_ranks(row_ranks), row_ranks


@dataclasses.dataclass
class FitResult:
    best_valid: float
    best_epoch: int
    epochs: int
    train_time_s: float
    stopped: str  # "patience" | "max_epochs" | "max_minutes"
    curve: list[dict]


def fit(model: torch.nn.Module, cfg: TrainConfig, epoch_batches: Callable[[random.Random], Iterator],
        loss_fn: Callable[[tuple], torch.Tensor], valid_score: Callable[[], float], seed: int,
        desc: str = "train") -> FitResult:
    """The one training loop: AdamW, early stopping on ``valid_score()`` (valid NDCG@10), best weights restored."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_epoch, best_state, bad, curve = -math.inf, 0, None, 0, []
    stopped, t0 = "max_epochs", time.monotonic()
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        total, n = 0.0, 0
        for batch in tqdm(epoch_batches(rng), desc=f"{desc} ep{epoch}", leave=False, disable=None):
            loss = loss_fn(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total, n = total + loss.item(), n + 1
        point = {"epoch": epoch, "train_loss": total / max(n, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            model.eval()
            with torch.no_grad():
                score = valid_score()
            point[f"valid_{VALID_METRIC}"] = score
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        curve.append(point)
        log.info("%s epoch %d: %s", desc, epoch, {k: round(v, 5) for k, v in point.items() if k != "epoch"})
        if bad >= cfg.patience and epoch >= cfg.min_epochs:
            stopped = "patience"
            break
        if time.monotonic() - t0 > cfg.max_minutes * 60:
            stopped = "max_minutes"
            break
    if best_state is None:  # stopped before any evaluation: evaluate the last weights once
        model.eval()
        with torch.no_grad():
            best, best_epoch = valid_score(), epoch
    else:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best, best_epoch, epoch, time.monotonic() - t0, stopped, curve)


class Recommender:
    """A baseline: ``fit()`` on train (early stopping on valid), ``recommend(histories, k)`` -> top-k keys.

    Keys are item ids, except for models that rank SIDs (``unit = "sid"``), whose keys are SID tuples.
    """

    unit = "item"

    def __init__(self, data: SeqData, seed: int):
        self.data, self.seed = data, seed

    def fit(self) -> FitResult | None:
        raise NotImplementedError

    def recommend(self, histories: list[list[int]], k: int) -> list[list[Hashable]]:
        raise NotImplementedError

    def keys(self, items: list[int]) -> list[Hashable]:
        return list(items)

    def valid_score(self, k: int = 20) -> float:
        hist, targets = self.data.rows("valid")
        return evaluate(self.recommend, hist, self.keys(targets), k)[0][VALID_METRIC]
