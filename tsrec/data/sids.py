"""Semantic IDs: the token pattern and order, SID strings, and the codebook section that says which SID index
(official / rqvae / rqkmeans) every downstream stage reads (``index_path``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Sequence

from tsrec.core.config import section

SID_PATTERN = re.compile(r"<([a-z])_(\d+)>")
Method = Literal["official", "rqvae", "rqkmeans"]


def sid_sort_key(token: str) -> tuple[str, int, str]:
    m = SID_PATTERN.fullmatch(token)
    return (m.group(1), int(m.group(2)), token) if m else ("~", 0, token)


def index_tokens(index: dict[str, list[str]]) -> list[str]:
    """All distinct SID tokens of an index (published format), sorted by level then code."""
    return sorted({t for sid in index.values() for t in sid}, key=sid_sort_key)


def sid_str(tokens: Sequence[str]) -> str:
    return "".join(tokens)


@dataclasses.dataclass
class RQVAEConfig:
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 128])
    latent_dim: int = 32
    epochs: int = 300
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 0.25  # commitment weight
    kmeans_init: bool = True
    reseed_dead: bool = True  # codes unused during an epoch restart at random batch residuals

    def validate(self) -> None:
        if self.latent_dim < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("latent_dim, epochs, batch_size >= 1 and lr > 0 required")
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden sizes must be >= 1")


@dataclasses.dataclass
class RQKMeansConfig:
    n_init: int = 1
    max_iter: int = 300

    def validate(self) -> None:
        if self.n_init < 1 or self.max_iter < 1:
            raise ValueError("n_init and max_iter must be >= 1")


@dataclasses.dataclass
class CodebookConfig:
    methods: list[Method] = dataclasses.field(default_factory=lambda: ["official", "rqvae", "rqkmeans"])
    use: Method = "official"  # the index downstream stages read (index_path)
    levels: int = 3
    codebook_size: int = 256
    collision: Literal["reassign_last", "none"] = "reassign_last"
    seed: int | None = None  # None: the top-level seed
    out: str = "artifacts"  # -> <out>/<DS>/sid/<method>/
    report: str = "results"  # -> <report>/<DS>/codebook_report.json
    rqvae: RQVAEConfig = dataclasses.field(default_factory=RQVAEConfig)
    rqkmeans: RQKMeansConfig = dataclasses.field(default_factory=RQKMeansConfig)

    def validate(self) -> None:
        if not 1 <= self.levels <= 26:
            raise ValueError("levels must be in 1..26 (one letter per level)")
        if self.codebook_size < 2:
            raise ValueError("codebook_size must be >= 2")
        if not self.methods:
            raise ValueError("methods must not be empty")
        if self.use != "official" and self.use not in self.methods:
            raise ValueError(f"use: {self.use!r} is not among methods {self.methods}, so it would never be built")


def codebook_config(params: dict) -> CodebookConfig:
    return section(params, "codebook", CodebookConfig)


def token_key(token: str) -> tuple[int, int]:
    m = re.fullmatch(r"<([a-z])_(\d+)>", token)
    return (ord(m.group(1)) - 97, int(m.group(2))) if m else (99, 0)

