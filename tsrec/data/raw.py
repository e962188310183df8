"""Raw Amazon'18 review + metadata JSON lines -> canonical dataset, following MiniOneRec's preprocessing.

Steps, in order: time window on review time; drop items without a usable title; keep each
(user, item) pair's earliest review; iterative k-core on users and items; per-user time order;
sliding window (history = previous <= max_history items, positions i >= 1); all rows sorted by
target time, split 8:1:1 (train/valid/test). Item ids are re-numbered 0..n-1 in asin order.
The raw files carry no SID index: build one with `tsrec codebook` (rqvae / rqkmeans).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import html
import json
import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from tsrec.data.datasets import rows_frame
from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_dir, sha256_file, write_json

log = logging.getLogger(__name__)
TAG = re.compile(r"<[^>]+>")


@dataclasses.dataclass
class RawConfig:
    start: str = "2016-10-01"  # inclusive, UTC
    end: str = "2018-11-30"  # inclusive, UTC
    k_core: int = 5
    max_history: int = 10
    max_title_len: int = 300
    split: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])

    def validate(self) -> None:
        if self.k_core < 1 or self.max_history < 1:
            raise ValueError("k_core and max_history must be >= 1")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-9 or min(self.split) <= 0:
            raise ValueError("split must be 3 positive shares summing to 1")
        for d in (self.start, self.end):
            dt.date.fromisoformat(d)

    def window(self) -> tuple[int, int]:
        day = dt.timedelta(days=1)
        start = dt.datetime.fromisoformat(self.start).replace(tzinfo=dt.timezone.utc)
        end = dt.datetime.fromisoformat(self.end).replace(tzinfo=dt.timezone.utc) + day
        return int(start.timestamp()), int(end.timestamp()) - 1


def _json_lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=n) from exc


def _field(rec: dict, name: str, kind: type | tuple, path: Path, n: int):
    value = rec.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TsrecError(f"missing or not {getattr(kind, '__name__', kind)}: {value!r}", file=path, line=n,
                         field=name)
    return value


def clean_title(title: object, max_len: int) -> str | None:
    """MiniOneRec-style title filter: a non-empty plain-text title of bounded length, else None."""
    if not isinstance(title, str):
        return None
    title = html.unescape(title).strip()
    if not title or TAG.search(title) or len(title) > max_len:
        return None
    return " ".join(title.split())


def read_meta(path: Path, cfg: RawConfig) -> dict[str, dict]:
    items = {}
    for n, rec in _json_lines(path):
        asin = _field(rec, "asin", str, path, n)
        title = clean_title(rec.get("title"), cfg.max_title_len)
        if title is None:
            continue
        desc = rec.get("description", "")
        items[asin] = {
            "title": title,
            "description": str(desc) if desc else "",  # MiniOneRec keeps str(list)
            "brand": str(rec.get("brand") or ""),
            "categories": json.dumps(rec.get("category") or rec.get("categories") or [], ensure_ascii=False),
        }
    return items


def read_reviews(path: Path, cfg: RawConfig, titled: set[str]) -> list[tuple[str, str, int]]:
    lo, hi = cfg.window()
    earliest: dict[tuple[str, str], int] = {}
    for n, rec in _json_lines(path):
        user = _field(rec, "reviewerID", str, path, n)
        asin = _field(rec, "asin", str, path, n)
        ts = _field(rec, "unixReviewTime", int, path, n)
        if lo <= ts <= hi and asin in titled and ts < earliest.get((user, asin), 1 << 62):
            earliest[(user, asin)] = ts
    return [(u, i, t) for (u, i), t in earliest.items()]


def k_core(inter: list[tuple[str, str, int]], k: int) -> list[tuple[str, str, int]]:
    while True:
        users = Counter(u for u, _, _ in inter)
        items = Counter(i for _, i, _ in inter)
        kept = [x for x in inter if users[x[0]] >= k and items[x[1]] >= k]
        if len(kept) == len(inter):
            return kept
        inter = kept


def build_from_raw(reviews: Path, meta: Path, out_root: Path, name: str, cfg: RawConfig) -> dict:
    """Raw Amazon'18 reviews + metadata -> the canonical splits (time window, k-core, global time split)."""
    for p in (reviews, meta):
        if not p.is_file():
            raise TsrecError("raw file not found", file=p)
    items_meta = read_meta(meta, cfg)
    inter = k_core(read_reviews(reviews, cfg, set(items_meta)), cfg.k_core)
    if not inter:
        raise TsrecError(f"no interactions survive the time window and {cfg.k_core}-core filter", file=reviews)
    asins = sorted({i for _, i, _ in inter})
    ids = {a: n for n, a in enumerate(asins)}
    by_user: dict[str, list[tuple[int, str]]] = {}
    for u, i, t in inter:
        by_user.setdefault(u, []).append((t, i))
    rows = []
    for u, seq in by_user.items():
        seq.sort()
        for j in range(1, len(seq)):
            hist = [ids[i] for _, i in seq[max(0, j - cfg.max_history):j]]
            rows.append((seq[j][0], {"user_id": u, "history": hist, "target": ids[seq[j][1]]}))
    rows.sort(key=lambda r: r[0])  # stable: ties keep user order
    n_train = int(len(rows) * cfg.split[0])
    n_valid = int(len(rows) * (cfg.split[0] + cfg.split[1])) - n_train
    parts = {"train": rows[:n_train], "valid": rows[n_train:n_train + n_valid], "test": rows[n_train + n_valid:]}
    items_df = pd.DataFrame([{"item_id": ids[a], **items_meta[a], "asin": a} for a in asins])
    card = {
        "dataset": name, "protocol": "official", "source": {"kind": "raw", "reviews": str(reviews), "meta": str(meta)},
        "preprocessing": dataclasses.asdict(cfg),
        "counts": {"items": len(asins), "users": len(by_user), "interactions": len(inter),
                   **{k: len(v) for k, v in parts.items()}},
        "inputs_sha256": {str(reviews): sha256_file(reviews), str(meta): sha256_file(meta)},
        "sid_index": None,
    }
    with atomic_dir(out_root / name) as tmp:
        items_df.to_parquet(tmp / "items.parquet", index=False)
        for split, part in parts.items():
            rows_frame([r for _, r in part]).to_parquet(tmp / f"{split}.parquet", index=False)
        write_json(tmp / "card.json", card)
    log.info("%s from raw: %s", name, card["counts"])
    return card
