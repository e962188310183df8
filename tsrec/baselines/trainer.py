"""Shared data view, trainer and evaluator for every baseline (RecBole's shape: models only define the net).

Data: the canonical ``data/<DS>/{train,valid,test}.parquet`` rows (history oldest first, <= 10 items; target).
Training examples: every (prefix -> next item) pair inside ``history + [target]`` of each train row, de-duplicated
per user. On the reconstructed split every such pair is already a train row (rows are the prefixes of one
sequence per user), so the expansion adds nothing there but keeps the pair set right on sliding-window splits.

Evaluation: full ranking, at BOTH granularities (``Granularity``), from one ranked list per row in the
recommender's own unit (``Recommender.unit``):
  * SID level (the authors' protocol, the top-level ``HR@K`` / ``NDCG@K`` keys, as in the LLM variants'
    metrics.json): the ranked list is a list of DISTINCT SIDs and a SID is a hit for every item sharing it. An
    item ranker's list is mapped to SIDs keeping the first occurrence of each (a SID scores as its best item).
  * item level (``item/HR@K`` / ``item/NDCG@K``): the ranked list is a list of items. A SID ranker's list is
    expanded SID by SID to the SID's items in one fixed order: train popularity (``SeqData.popularity``,
    descending), then item id (ascending).
Early stopping and tuning use the SID-level valid NDCG@10 (``VALID_METRIC``) for every model: one rule.
Budgets are epochs and patience only (no wall clock: machine load must not pick the epoch).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tsrec.data.datasets import load_index, load_items, load_split
from tsrec.core.errors import TsrecError
from tsrec.eval.metrics import ITEM_PREFIX, both_levels, ranks

log = logging.getLogger(__name__)

PAD = 0  # item index 0 is padding; item i of items.parquet (row order) is index i + 1
VALID_METRIC = "NDCG@10"  # SID level (top-level key), the same rule for every model


@dataclasses.dataclass
class FitConfig:
    """Optimiser and early stopping, shared by every learned baseline (each may override per model)."""

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 200
    patience: int = 10  # evaluations without a better valid NDCG@10 before stopping
    min_epochs: int = 10  # no early stop before this (the first epochs sit on a popularity plateau)
    eval_every: int = 1  # epochs between valid evaluations
    grad_clip: float = 5.0
    # no wall-clock budget: `max_minutes` was removed (a loaded machine cut runs short); a params file that
    # still sets it is refused as an unknown key

    def validate(self) -> None:
        for name in ("batch_size", "max_epochs", "patience", "eval_every", "min_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.min_epochs > self.max_epochs:
            raise ValueError("min_epochs must be <= max_epochs")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("lr and grad_clip must be > 0, weight_decay >= 0")


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
    """One dataset, item ids mapped to dense indices 1..n_items (0 = padding), and its SID index.

    ``index_file``: the SID index in use (default ``<data_dir>/sid_index.json``); every model needs it for the
    SID-level metrics, TIGER also to train.
    """

    def __init__(self, data_dir: str | Path, max_len: int = 10, max_rows: int | None = None,
                 index_file: str | Path | None = None):
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
        self.index_file = Path(index_file) if index_file else self.dir / "sid_index.json"
        self.index = load_index(self.index_file)
        missing = [i for i in self.item_ids if i not in self.index][:5]
        if missing:
            raise TsrecError(f"items without a SID in the index, e.g. {missing}", file=self.index_file)
        self.gran = Granularity(self.item_ids, self.index, self.popularity)
        log.info("%s: %d items on %d SIDs, %d train rows -> %d (prefix, next) pairs", self.dir.name, self.n_items,
                 len(self.gran.sid_items), len(self.splits["train"]), len(self.pairs))

    @cached_property
    def popularity(self) -> Counter:
        """Train interactions per item: every pair's target, plus the first item of each sequence (the
        context of its length-1 pair). Pop's ranking and the item-level tie order."""
        counts: Counter[int] = Counter()
        for ctx, nxt in self.pairs:
            counts[nxt] += 1
            if len(ctx) == 1:
                counts[ctx[0]] += 1
        return counts

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


class Granularity:
    """The two scoring units of one dataset: items and SIDs (module doc), and the maps between ranked lists."""

    def __init__(self, item_ids: Sequence[int], index: dict[int, Sequence[str]], popularity: Counter):
        self.item_sid = {i: tuple(index[i]) for i in item_ids}
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in item_ids:
            groups.setdefault(self.item_sid[i], []).append(i)
        # the fixed, documented expansion order of a SID: train popularity (descending), then item id
        self.sid_items = {sid: sorted(items, key=lambda i: (-popularity.get(i, 0), i)) for sid, items in groups.items()}
        # items beyond the first of each shared SID: an item list this much longer than k covers >= k SIDs
        self.slack = len(self.item_sid) - len(self.sid_items)

    def to_sids(self, items: Sequence[int], k: int) -> list[tuple[str, ...]]:
        """Item ranking -> ranking of distinct SIDs (first occurrence kept), at most k."""
        seen: dict[tuple[str, ...], None] = {}
        for i in items:
            seen.setdefault(self.item_sid[i])
            if len(seen) == k:
                break
        return list(seen)

    def to_items(self, sids: Sequence[tuple[str, ...]], k: int) -> list[int]:
        """SID ranking -> item ranking: each SID's items in popularity-then-id order, at most k."""
        out: list[int] = []
        for sid in sids:
            out.extend(self.sid_items[sid])
            if len(out) >= k:
                break
        return out[:k]


def evaluate(rec: "Recommender", histories: list[list[int]], targets: list[int], k: int = 20,
             batch_size: int | None = None) -> tuple[dict[str, float], dict[str, list[int]]]:
    """HR/NDCG@{1,3,5,10,20} at both granularities (module doc) of ``rec.recommend`` on (history, target item)
    rows. Returns (metrics: SID level top-level, item level under ``item/``; row ranks per level)."""
    gran = rec.data.gran
    batch_size = batch_size or rec.eval_batch
    sid_ranks: list[int] = []
    item_ranks: list[int] = []
    for start in range(0, len(histories), batch_size):
        hist, tgt = histories[start:start + batch_size], targets[start:start + batch_size]
        if rec.unit == "item":
            lists = rec.recommend(hist, k + gran.slack)
            items, sids = [lst[:k] for lst in lists], [gran.to_sids(lst, k) for lst in lists]
        else:
            lists = rec.recommend(hist, k)
            sids, items = [lst[:k] for lst in lists], [gran.to_items(lst, k) for lst in lists]
        sid_ranks.extend(ranks(sids, [gran.item_sid[t] for t in tgt]))
        item_ranks.extend(ranks(items, tgt))
    return both_levels(sid_ranks, item_ranks), {"sid": sid_ranks, "item": item_ranks}


@dataclasses.dataclass
class FitResult:
    best_valid: float
    best_epoch: int
    epochs: int
    train_time_s: float
    stopped: str  # "patience" (valid plateau) | "max_epochs" (budget exhausted while still improving)
    curve: list[dict]


def fit(model: torch.nn.Module, cfg: FitConfig, epoch_batches: Callable[[random.Random], Iterator],
        loss_fn: Callable[[tuple], torch.Tensor], valid_eval: Callable[[], dict[str, float]], seed: int,
        desc: str = "train") -> FitResult:
    """The one training loop: AdamW, early stopping on ``valid_eval()[VALID_METRIC]`` (SID-level valid
    NDCG@10) after ``patience`` evaluations without improvement (never before ``min_epochs``), best weights
    restored. The curve records, per epoch, the train loss and the valid NDCG@10 at both granularities."""
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
                valid = valid_eval()
            score = valid[VALID_METRIC]
            point[f"valid_{VALID_METRIC}"] = score
            point[f"valid_{ITEM_PREFIX}{VALID_METRIC}"] = valid[ITEM_PREFIX + VALID_METRIC]
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
    if best_state is None:  # no evaluation improved on -inf (cannot happen: the last epoch is always evaluated)
        raise TsrecError(f"{desc}: no valid evaluation during training")
    else:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best, best_epoch, epoch, time.monotonic() - t0, stopped, curve)


class Recommender:
    """A baseline: ``fit()`` on train (early stopping on valid), ``recommend(histories, k)`` -> top-k keys.

    Keys are item ids (``unit = "item"``), or SID token tuples for models that rank SIDs (``unit = "sid"``).
    ``evaluate`` scores both granularities from them.
    """

    unit = "item"
    deterministic = False  # True: no randomness, one run stands for every seed
    eval_batch = 512  # rows per recommend() call in evaluation

    def __init__(self, data: SeqData, seed: int):
        self.data, self.seed = data, seed

    @property
    def module(self) -> torch.nn.Module | None:
        """The trained network (its state is what a resumed run restores); None for count models."""
        return None

    def fit(self) -> FitResult | None:
        raise NotImplementedError

    def recommend(self, histories: list[list[int]], k: int) -> list[list[Hashable]]:
        raise NotImplementedError

    def valid_eval(self, k: int = 20) -> dict[str, float]:
        """Metrics on the valid rows used for early stopping (all rows unless a model restricts them)."""
        hist, targets = self.data.rows("valid")
        return evaluate(self, hist, targets, k)[0]

    @property
    def valid_rows(self) -> int:
        return len(self.data.splits["valid"])
