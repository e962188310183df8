"""ID-based sequential recommenders: SASRec, HSTU, GRU4Rec, Caser.

Each net encodes a right-padded history [B, L] (item indices, 0 = pad) into one user vector [B, d];
scores are its dot products with ALL item embeddings (full softmax over every item: training loss is
cross-entropy over all n_items classes, no sampled negatives; evaluation ranks all items).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tsrec.baselines.trainer import PAD, FitResult, Recommender, SeqData, TrainConfig, fit, set_seed


@dataclasses.dataclass
class SeqModelConfig:
    hidden: int = 64
    dropout: float = 0.3
    train: dict = dataclasses.field(default_factory=dict)  # overrides of baselines.train for this model

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "n_v", "n_h"):
            if getattr(self, name, 1) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.hidden % getattr(self, "heads", 1):
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")


@dataclasses.dataclass
class SASRecConfig(SeqModelConfig):
    layers: int = 2
    heads: int = 2


@dataclasses.dataclass
class HSTUConfig(SASRecConfig):
    pass


@dataclasses.dataclass
class GRU4RecConfig(SeqModelConfig):
    layers: int = 1


@dataclasses.dataclass
class CaserConfig(SeqModelConfig):
    n_v: int = 4  # vertical filters
    n_h: int = 16  # horizontal filters per height 1..L


class SequentialRecommender(nn.Module):
    """Item embedding table shared by input and output (tied), and full-softmax scoring."""

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__()
        self.n_items, self.max_len, self.cfg = n_items, max_len, cfg
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=PAD)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def encode(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # [B, L], [B] -> [B, d]
        raise NotImplementedError

    def scores(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits over all items [B, n_items] (class c = item index c + 1)."""
        return self.encode(seq, lengths) @ self.item_emb.weight[1:].T

    @staticmethod
    def last(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return hidden[torch.arange(hidden.size(0)), lengths - 1]


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley 2018): causal transformer, learned positions."""

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden * 2, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, seq, lengths):
        L = seq.size(1)
        x = self.item_emb(seq) * self.cfg.hidden ** 0.5 + self.pos_emb(torch.arange(L))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
        # right padding: every real query sees only real keys at or before it, so no row is fully masked
        h = self.blocks(self.drop(x), mask=causal, src_key_padding_mask=seq == PAD, is_causal=True)
        return self.norm(self.last(h, lengths))


class HSTUBlock(nn.Module):
    """One HSTU layer (Zhai et al. 2024): pointwise SiLU attention (no softmax, scaled by 1/L), a learned
    relative-position bias per head, and the gating U: x + f2(Norm(A V) * U). No timestamps in our data."""

    def __init__(self, d: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.heads = heads
        self.norm_in, self.norm_out = nn.LayerNorm(d), nn.LayerNorm(d)
        self.f1, self.f2 = nn.Linear(d, 4 * d), nn.Linear(d, d)
        self.rab = nn.Parameter(torch.zeros(heads, 2 * max_len - 1))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:  # allowed [B, L, L] bool
        B, L, d = x.shape
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(d, dim=-1)
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, h, L, dh]
        rel = torch.arange(L).unsqueeze(1) - torch.arange(L).unsqueeze(0) + L - 1
        a = F.silu(q @ k.transpose(-1, -2) + self.rab[:, rel]) * allowed.unsqueeze(1) / L
        av = (self.drop(a) @ v).transpose(1, 2).reshape(B, L, d)
        return x + self.drop(self.f2(self.norm_out(av) * u))


class HSTU(SequentialRecommender):
    """Hierarchical sequential transduction units, ID-only (positions, no time features)."""

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.blocks = nn.ModuleList(HSTUBlock(cfg.hidden, cfg.heads, cfg.dropout, max_len) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, seq, lengths):
        L = seq.size(1)
        x = self.drop(self.item_emb(seq) * self.cfg.hidden ** 0.5 + self.pos_emb(torch.arange(L)))
        allowed = torch.tril(torch.ones(L, L, dtype=torch.bool)).unsqueeze(0) & (seq != PAD).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(self.last(x, lengths))


class GRU4Rec(SequentialRecommender):
    """Session-based GRU (Hidasi et al. 2016) with cross-entropy over all items."""

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def encode(self, seq, lengths):
        # right padding: the output at position len-1 has seen only real items (pads come after it)
        out, _ = self.gru(self.drop(self.item_emb(seq)))
        return self.last(out, lengths)


class Caser(SequentialRecommender):
    """Convolutional sequence embedding (Tang & Wang 2018) over the last max_len items (left-padded window).

    The original's per-user embedding is left out: valid/test users are scored from their history only.
    """

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        d, L = cfg.hidden, max_len
        self.conv_v = nn.Linear(L, cfg.n_v)  # vertical filters: (L x 1) kernels over the window
        # horizontal filters of height h = 1..L as linear maps of the flattened h x d windows (= Conv2d)
        self.conv_h = nn.ModuleList(nn.Linear(h * d, cfg.n_h) for h in range(1, L + 1))
        self.fc = nn.Linear(cfg.n_v * d + cfg.n_h * L, d)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, seq, lengths):
        L = seq.size(1)
        # right-align the window so the most recent item is always in the last row
        shift = (torch.arange(L).unsqueeze(0) - (L - lengths).unsqueeze(1)) % L
        e = self.item_emb(torch.gather(seq, 1, shift))  # [B, L, d]
        out_v = self.conv_v(e.transpose(1, 2)).flatten(1)  # [B, d * n_v]
        out_h = []
        for h, lin in enumerate(self.conv_h, start=1):
            windows = e.unfold(1, h, 1).transpose(2, 3).flatten(2)  # [B, L-h+1, h*d]
            out_h.append(torch.relu(lin(windows)).max(dim=1).values)  # max-pool over positions -> [B, n_h]
        return torch.relu(self.fc(self.drop(torch.cat([out_v, *out_h], dim=1))))


NETS = {"sasrec": SASRec, "hstu": HSTU, "gru4rec": GRU4Rec, "caser": Caser}


class IDRecommender(Recommender):
    """Wraps one of NETS: trained by the shared ``fit`` loop, full softmax CE, ranks all items."""

    def __init__(self, data: SeqData, seed: int, net: str, cfg: SeqModelConfig, train: TrainConfig):
        super().__init__(data, seed)
        set_seed(seed)
        self.net = NETS[net](data.n_items, data.max_len, cfg)
        self.train_cfg, self.name = train, net

    def fit(self) -> FitResult:
        ce = nn.CrossEntropyLoss()

        def loss(batch):
            seq, lengths, target = batch
            return ce(self.net.scores(seq, lengths), target)

        return fit(self.net, self.train_cfg, lambda rng: self.data.batches(self.train_cfg.batch_size, rng),
                   loss, self.valid_score, self.seed, desc=self.name)

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """Full ranking scores [B, n_items] (column c = item ``data.item_ids[c]``)."""
        self.net.eval()
        return self.net.scores(*self.data.encode(histories))

    def recommend(self, histories, k):
        top = self.scores(histories).topk(k, dim=1).indices.tolist()
        ids = self.data.item_ids
        return [[ids[c] for c in row] for row in top]
