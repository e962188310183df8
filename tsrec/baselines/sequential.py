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

from tsrec.baselines.trainer import PAD, FitConfig, FitResult, Recommender, SeqData, fit, set_seed


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
    """Item embedding table shared by input and output (tied), and full-softmax scoring.

    Every subclass initialises ALL its weights in ``reset_parameters`` (called at the end of its
    ``__init__``) as its reference implementation does, and says where each choice comes from. PyTorch's
    defaults are never relied on silently: nn.Embedding's N(0, 1) put SASRec's positions ~6x above its
    items and kept it at the popularity plateau for many epochs (issue 14).
    """

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__()
        self.n_items, self.max_len, self.cfg = n_items, max_len, cfg
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=PAD)

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def _zero_pad(self) -> None:
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
    """Self-attentive sequential recommendation (Kang & McAuley 2018): causal transformer, learned positions.

    Forward as the authors' code (kang205/SASRec): input = item embedding * sqrt(d) + position embedding,
    dropout, pre-LayerNorm attention / feed-forward blocks, a final LayerNorm.
    """

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden * 2, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # RecBole SASRec._init_weights (initializer_range = 0.02): every Embedding (items AND positions) and
        # every Linear weight ~ N(0, 0.02), Linear biases 0, LayerNorm weight 1 / bias 0. RecBole's q/k/v are
        # separate Linears; nn.MultiheadAttention packs them in in_proj_weight, so that gets N(0, 0.02) too.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.normal_(m.in_proj_weight, std=0.02)
                nn.init.zeros_(m.in_proj_bias)
        self._zero_pad()

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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # facebookresearch/generative-recommenders, SequentialTransductionUnitJagged: the fused U,V,Q,K
        # projection (_uvqk, no bias there: ours is zeroed) ~ N(0, 0.02); the output projection _o gets
        # xavier_uniform_ weights (bias: PyTorch's Linear default, as there); the relative position bias
        # (RelativeBucketedTimeAndPositionBasedBias._pos_w) ~ N(0, 0.02); LayerNorms 1 / 0.
        nn.init.normal_(self.f1.weight, std=0.02)
        nn.init.zeros_(self.f1.bias)
        nn.init.xavier_uniform_(self.f2.weight)
        bound = 1 / self.f2.in_features ** 0.5
        nn.init.uniform_(self.f2.bias, -bound, bound)
        nn.init.normal_(self.rab, std=0.02)
        for norm in (self.norm_in, self.norm_out):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:  # allowed [B, L, L] bool
        B, L, d = x.shape
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(d, dim=-1)
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, h, L, dh]
        rel = torch.arange(L).unsqueeze(1) - torch.arange(L).unsqueeze(0) + L - 1
        a = F.silu(q @ k.transpose(-1, -2) + self.rab[:, rel]) * allowed.unsqueeze(1) / L
        av = (self.drop(a) @ v).transpose(1, 2).reshape(B, L, d)
        return x + self.drop(self.f2(self.norm_out(av) * u))


class HSTU(SequentialRecommender):
    """Hierarchical sequential transduction units, ID-only (positions, no time features).

    Input as generative-recommenders' LearnablePositionalEmbeddingInputFeaturesPreprocessor: item embedding
    * sqrt(d) + position embedding, then dropout.
    """

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.blocks = nn.ModuleList(HSTUBlock(cfg.hidden, cfg.heads, cfg.dropout, max_len) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # generative-recommenders: item embeddings truncated N(0, 0.02) (LocalEmbeddingModule.reset_params),
        # position embeddings truncated N(0, sqrt(1 / d)) (the preprocessor's reset_state); their
        # truncated_normal folds at 2 sigma, trunc_normal_ at +-2 sigma is the same support. Blocks: HSTUBlock.
        d = self.cfg.hidden
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02, a=-0.04, b=0.04)
        std = (1.0 / d) ** 0.5
        nn.init.trunc_normal_(self.pos_emb.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        for block in self.blocks:
            block.reset_parameters()
        self._zero_pad()

    def encode(self, seq, lengths):
        L = seq.size(1)
        x = self.drop(self.item_emb(seq) * self.cfg.hidden ** 0.5 + self.pos_emb(torch.arange(L)))
        allowed = torch.tril(torch.ones(L, L, dtype=torch.bool)).unsqueeze(0) & (seq != PAD).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(self.last(x, lengths))


class GRU4Rec(SequentialRecommender):
    """Session-based GRU (Hidasi et al. 2016) with cross-entropy over all items.

    Forward as RecBole's GRU4Rec: embedding dropout, GRU, a dense layer back to the embedding size, the last
    real position's output scored against the (tied) item embeddings.
    """

    def __init__(self, n_items: int, max_len: int, cfg: SeqModelConfig):
        super().__init__(n_items, max_len, cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # RecBole GRU4Rec._init_weights: Embedding xavier_normal_; GRU weight_ih / weight_hh xavier_uniform_
        # (biases keep PyTorch's GRU default, as there); the dense Linear keeps PyTorch's default, as there.
        nn.init.xavier_normal_(self.item_emb.weight)
        for name, w in self.gru.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(w)
            else:
                bound = 1 / self.cfg.hidden ** 0.5
                nn.init.uniform_(w, -bound, bound)
        self.dense.reset_parameters()
        self._zero_pad()

    def encode(self, seq, lengths):
        # right padding: the output at position len-1 has seen only real items (pads come after it)
        out, _ = self.gru(self.drop(self.item_emb(seq)))
        return self.dense(self.last(out, lengths))


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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # RecBole Caser._init_weights: Embedding ~ N(0, 1 / embedding_size); Linear (the fc layer) xavier_normal_
        # weight, bias 0. Its convolutions are nn.Conv2d with PyTorch's default init, which for our Linear
        # form is nn.Linear's default (same kaiming-uniform rule, same fan-in h * d resp. L).
        nn.init.normal_(self.item_emb.weight, std=1.0 / self.cfg.hidden)
        for conv in (self.conv_v, *self.conv_h):
            conv.reset_parameters()
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self._zero_pad()

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

    def __init__(self, data: SeqData, seed: int, net: str, cfg: SeqModelConfig, train: FitConfig):
        super().__init__(data, seed)
        set_seed(seed)
        self.net = NETS[net](data.n_items, data.max_len, cfg)
        self.train_cfg, self.name = train, net

    @property
    def module(self) -> nn.Module:
        return self.net

    def fit(self) -> FitResult:
        ce = nn.CrossEntropyLoss()

        def loss(batch):
            seq, lengths, target = batch
            return ce(self.net.scores(seq, lengths), target)

        return fit(self.net, self.train_cfg, lambda rng: self.data.batches(self.train_cfg.batch_size, rng),
                   loss, self.valid_eval, self.seed, desc=self.name)

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """Full ranking scores [B, n_items] (column c = item ``data.item_ids[c]``)."""
        self.net.eval()
        return self.net.scores(*self.data.encode(histories))

    def recommend(self, histories, k):
        top = self.scores(histories).topk(k, dim=1).indices.tolist()
        ids = self.data.item_ids
        return [[ids[c] for c in row] for row in top]
