"""The MiniOneRec files of a dataset -> the canonical splits: fetch from the read-only mirror or the pinned
URL (sha256-checked), parse, reconstruct train rows where the train CSV is absent, write atomically with a
data card (``tsrec data``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, sha256_file, write_json
from tsrec.data.datasets import (
    DATASETS,
    PINNED_SHA256,
    URL_PATTERN,
    DataConfig,
    check_info,
    load_index,
    mirror_sums,
    parse_items,
    parse_split,
    rows_frame,
    subpaths,
    verify,
)
from tsrec.data.download import download_url, download_verified

log = logging.getLogger(__name__)


def fetch(cfg: DataConfig, subpath: str, *, optional: bool = False) -> Path | None:
    """Return a verified local copy of ``data/Amazon/<subpath>`` from the mirror or the pinned URL."""
    if cfg.source == "mirror":
        root = cfg.mirror_root
        path = root / "minionerec" / "Amazon" / subpath
        if not path.is_file():
            if optional:
                return None
            raise TsrecError("file missing from mirror (set data.mirror or $TSREC_MIRROR)", file=path)
        expected = PINNED_SHA256.get(subpath) or mirror_sums(root).get(subpath)
        if expected is None:
            raise TsrecError("no pinned or mirror checksum for this file; refusing to use it unverified", file=path)
        verify(path, expected)
        return path
    expected = PINNED_SHA256.get(subpath)
    url = URL_PATTERN.format(commit=cfg.commit, subpath=subpath)
    if expected is None:
        if optional:
            log.warning("%s has no pinned checksum; not using it", subpath)
            return None
        raise TsrecError("no pinned checksum for this file", file=url)
    try:
        return download_verified(url, Path(cfg.download_cache) / cfg.commit / subpath, expected, cfg.timeout_s)
    except TsrecError as exc:
        if optional and isinstance(exc.__cause__, OSError):  # not reachable: an optional file is skipped
            return None
        raise


def reconstruct_train(valid: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Rebuild train rows from each user's first valid/test history (rule in the datasets README).

    Splits are by global time, so every position before a user's first valid/test target is a
    train row. Position j >= 1 of that history yields (history[:j] -> history[j]).
    """
    first: dict[str, list[int]] = {}
    for df in (valid, test):  # valid precedes test in time; rows inside each are time-ordered
        for user, hist in zip(df["user_id"], df["history"]):
            first.setdefault(user, list(hist))
    rows = [
        {"user_id": user, "history": hist[max(0, j - 10):j], "target": hist[j]}
        for user, hist in first.items()
        for j in range(1, len(hist))
    ]
    train = rows_frame(rows)
    held_out = {(u, tuple(h), t) for df in (valid, test) for u, h, t in zip(df["user_id"], df["history"], df["target"])}
    for u, h, t in zip(train["user_id"], train["history"], train["target"]):
        if (u, tuple(h), t) in held_out:
            raise TsrecError(f"reconstructed train row of user {u} equals a valid/test row")
        if first[u][:len(h) + 1] != [*h, t]:  # the target lies strictly inside the first held-out history
            raise TsrecError(f"reconstructed row of user {u} is not before the first valid/test target")
    return train


def build_dataset(cfg: DataConfig, ds: str, out_root: Path) -> dict:
    """Fetch, verify, parse and write one dataset atomically; return its data card."""
    if ds not in DATASETS:
        raise ParamError(f"unknown dataset {ds!r}; known: {list(DATASETS)}", field="data.datasets")
    sub = subpaths(ds)
    files: dict[str, Path | None] = {}
    for key, rel in tqdm(sub.items(), desc=f"fetch {ds}", unit="file", disable=None):
        want_train = key == "train"
        if want_train and cfg.train == "reconstruct":
            continue
        files[key] = fetch(cfg, rel, optional=want_train and cfg.train == "auto")
    items_df = parse_items(files["items"])
    item_ids = set(items_df["item_id"].tolist())
    index = load_index(files["index"])
    missing = sorted(item_ids - set(index))[:5]
    extra = sorted(set(index) - item_ids)[:5]
    if missing or extra:
        raise TsrecError(f"SID index and items disagree: items without SID {missing}, SIDs without item {extra}",
                         file=files["index"])
    check_info(files["info"], index)
    splits = {s: parse_split(files[s], item_ids, index) for s in ("valid", "test")}
    if files.get("train") is not None:
        splits["train"], protocol = parse_split(files["train"], item_ids, index), "official"
    else:
        if cfg.train == "official":
            raise TsrecError("train CSV not available but data.train is 'official'", file=sub["train"])
        splits["train"], protocol = reconstruct_train(splits["valid"], splits["test"]), "reconstructed"
        log.warning("%s: train CSV absent, train split RECONSTRUCTED from valid/test histories (%d rows)",
                    ds, len(splits["train"]))
    sids = {tuple(v) for v in index.values()}
    url = URL_PATTERN.split("{commit}")[0]
    log.info("%s: inputs from %s (sha256 in card.json)", ds,
             cfg.mirror_root if cfg.source == "mirror" else download_url(url))
    card = {
        "dataset": ds,
        "protocol": protocol,
        "source": {  # no mirror path: it is machine-specific and would change the DVC output hash
            "kind": cfg.source,
            **({} if cfg.source == "mirror" else {"location": url}),
            "repository": "github.com/AkaliKong/MiniOneRec",
            "commit": cfg.commit,
        },
        "counts": {
            "items": len(items_df),
            "sids_unique": len(sids),
            "train": len(splits["train"]),
            "valid": len(splits["valid"]),
            "test": len(splits["test"]),
            "users_train": int(splits["train"]["user_id"].nunique()),
        },
        "inputs_sha256": {sub[k]: sha256_file(p) for k, p in files.items() if p is not None},
    }
    dest = out_root / ds
    with atomic_dir(dest) as tmp:
        items_df.to_parquet(tmp / "items.parquet", index=False)
        write_json(tmp / "sid_index.json", {str(k): v for k, v in sorted(index.items())}, indent=None)
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        card["outputs_sha256"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json(tmp / "card.json", card)
    return card
