"""Generative retrieval over semantic IDs. TIGER (Rajput et al. 2023): a small T5 encoder-decoder trained
from scratch; encoder input = the history's SID tokens, decoder output = the target's SID tokens + EOS,
decoded with constrained beam search over the SID prefix trie (HF ``generate(prefix_allowed_tokens_fn=...)``).

Ranking unit is the SID, as for the LLM models: a generated SID equal to the target's SID is a hit, so items
that share a SID are indistinguishable (official index: 3,686 items on 3,670 SIDs for Industrial, 3,459 on
3,444 for Office).
Unlike the paper, no 4th de-duplication code and no user-id token are added.

The trie is ``tsrec.lm.decoding.SidTrie`` (shared with the LLM evaluation), over this model's own token ids.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import torch
from transformers import T5Config, T5ForConditionalGeneration

from tsrec.baselines.trainer import FitConfig, FitResult, Recommender, SeqData, evaluate, fit, set_seed
from tsrec.lm.decoding import SidTrie, seq2seq_beam_search
from tsrec.data.sids import SID_PATTERN

log = logging.getLogger(__name__)

PAD, EOS = 0, 1  # PAD is also the decoder start token


@dataclasses.dataclass
class TigerConfig:
    d_model: int = 128
    d_ff: int = 512
    layers: int = 2  # encoder and decoder layers each
    heads: int = 4
    dropout: float = 0.1
    ff_ratio: int = 4  # d_ff = ff_ratio * d_model when tuning varies the width (``baselines.tuning``)
    beams: int = 20  # beam width = number of SIDs returned (authors' protocol: 20)
    valid_beams: int = 20  # beam width for the early-stopping evaluation on valid
    valid_rows: int = 1000  # 0 = all valid rows for early stopping; N = the first N rows (recorded)
    eval_batch: int = 128
    train: dict = dataclasses.field(default_factory=dict)  # overrides of baselines.train

    def validate(self) -> None:
        for name in ("d_model", "d_ff", "layers", "heads", "beams", "valid_beams", "eval_batch", "ff_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.valid_rows < 0:
            raise ValueError("valid_rows must be >= 0")


class SidVocab:
    """SID token strings <-> ids: 0 PAD, 1 EOS, then every token of the index sorted by (level, code)."""

    def __init__(self, index: dict[int, list[str]]):
        tokens = {t for sid in index.values() for t in sid}
        key = lambda t: (SID_PATTERN.fullmatch(t).group(1), int(SID_PATTERN.fullmatch(t).group(2)))  # noqa: E731
        self.tokens = ["<pad>", "<eos>", *sorted(tokens, key=key)]
        self.id_of = {t: i for i, t in enumerate(self.tokens)}
        self.item_sid = {item: tuple(self.id_of[t] for t in sid) for item, sid in index.items()}
        self.levels = len(next(iter(index.values())))

    def __len__(self) -> int:
        return len(self.tokens)

    def text(self, ids: tuple[int, ...]) -> tuple[str, ...]:
        return tuple(self.tokens[i] for i in ids)


class TIGER(Recommender):
    unit = "sid"

    def __init__(self, data: SeqData, seed: int, cfg: TigerConfig, train: FitConfig):
        super().__init__(data, seed)
        self.cfg, self.train_cfg = cfg, train
        self.vocab = SidVocab({i: data.index[i] for i in data.item_ids})
        groups: dict[tuple[int, ...], list[int]] = {}  # colliding items share one leaf
        for item, sid in sorted(self.vocab.item_sid.items()):
            groups.setdefault(sid, []).append(item)
        self.trie = SidTrie(list(groups), EOS, items=list(groups.values()))
        set_seed(seed)
        self.model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(self.vocab), d_model=cfg.d_model, d_kv=cfg.d_model // cfg.heads, d_ff=cfg.d_ff,
            num_layers=cfg.layers, num_decoder_layers=cfg.layers, num_heads=cfg.heads, dropout_rate=cfg.dropout,
            feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
            tie_word_embeddings=True, relative_attention_num_buckets=16))

    # ---------------------------------------------------------------- tensors
    def encode(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[t for item in h[-self.data.max_len:] for t in self.vocab.item_sid[item]] for h in histories]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for r, toks in enumerate(rows):
            ids[r, :len(toks)] = torch.tensor(toks)
        return ids, (ids != PAD).long()

    def batches(self, rng: random.Random):
        pairs = list(self.data.pairs)
        rng.shuffle(pairs)
        bs = self.train_cfg.batch_size
        # length bucketing: sort inside windows of 16 batches so little padding is fed to the encoder
        window = 16 * bs
        pairs = [p for w in range(0, len(pairs), window) for p in sorted(pairs[w:w + window], key=lambda p: len(p[0]))]
        chunks = [pairs[start:start + bs] for start in range(0, len(pairs), bs)]
        rng.shuffle(chunks)
        for chunk in chunks:
            ids, mask = self.encode([c for c, _ in chunk])
            labels = torch.tensor([[*self.vocab.item_sid[t], EOS] for _, t in chunk])
            yield ids, mask, labels

    # ---------------------------------------------------------------- train / decode
    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def fit(self) -> FitResult:
        def loss(batch):
            ids, mask, labels = batch
            return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss

        return fit(self.model, self.train_cfg, self.batches, loss, self.valid_eval, self.seed, desc="tiger")

    @property
    def valid_rows(self) -> int:
        return self.cfg.valid_rows or len(self.data.splits["valid"])

    @property
    def eval_batch(self) -> int:
        return self.cfg.eval_batch

    def valid_eval(self, k: int = 20) -> dict[str, float]:
        """Early-stopping metrics on the first ``valid_rows`` valid rows, ``valid_beams`` beams."""
        hist, targets = self.data.rows("valid")
        n = self.valid_rows
        return evaluate(_Beams(self, self.cfg.valid_beams), hist[:n], targets[:n], k)[0]

    @torch.no_grad()
    def decode(self, histories: list[list[int]], beams: int) -> list[list[tuple[str, ...]]]:
        """Constrained beam search: per row, up to ``beams`` distinct valid SIDs, best first."""
        self.model.eval()
        ids, mask = self.encode(histories)
        res = seq2seq_beam_search(self.model, ids, mask, self.trie, beams, decoder_start_token_id=PAD)
        # -1: fewer valid SIDs than beams (tiny indexes only)
        return [[self.vocab.text(self.trie.sids[s]) for s in row if s >= 0] for row in res.sid_ids.tolist()]

    def recommend(self, histories, k):
        if k > self.cfg.beams:
            raise ValueError(f"top-{k} needs beams >= {k} (tiger.beams = {self.cfg.beams})")
        return [r[:k] for r in self.decode(histories, self.cfg.beams)]


class _Beams:
    """TIGER viewed as a recommender that decodes with a given beam width (the valid early-stopping one)."""

    unit = "sid"

    def __init__(self, tiger: TIGER, beams: int):
        self.tiger, self.beams, self.data, self.eval_batch = tiger, beams, tiger.data, tiger.cfg.eval_batch

    def recommend(self, histories, k):
        return [r[:k] for r in self.tiger.decode(histories, self.beams)]
