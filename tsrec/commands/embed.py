"""embed: frozen sentence-encoder embeddings of every item's cleaned title + description.

Output per dataset (``artifacts/<DS>/embed/``):
  embeddings.npy  float32 [n_items, d], rows in items.parquet order (sorted by item_id)
  meta.json       model spec + resolved folder, dim, counts, sha256 of inputs and output (no timings:
                  the DVC output hash must not change between identical runs; the time is logged)

``encode_texts(texts, model_spec, batch_size)`` is the reusable entry point: other stages (keyword
coherence, ...) embed text with the same frozen model through it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from tsrec.core.config import section
from tsrec.data.datasets import DataConfig, load_items
from tsrec.semantics.encoder import (
    TEXT_VERSION,
    EmbedConfig,
    clean_text,
    embed_dir,
    encode_texts,
    item_text,
    model_fingerprint,
    resolve_model,
)
from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_dir, sha256_file, write_json

log = logging.getLogger(__name__)


def embed_dataset(cfg: EmbedConfig, data_dir: Path, out: Path) -> dict:
    items = load_items(data_dir)
    if items.empty:
        raise TsrecError("no items", file=data_dir / "items.parquet")
    texts = [item_text(t, d, cfg.max_chars) for t, d in zip(items["title"], items["description"])]
    model_path = resolve_model(cfg.model)
    t0 = time.perf_counter()
    emb = encode_texts(texts, cfg.model, cfg.batch_size, max_seq_length=cfg.max_seq_length, progress=None,
                       desc=f"embed {data_dir.name}")
    seconds = time.perf_counter() - t0
    ids = items["item_id"].to_numpy(dtype=np.int64)
    meta = {
        "dataset": data_dir.name,
        "model": cfg.model,
        "model_folder": model_path.name if cfg.model.startswith("package:") else str(model_path),
        "model_sha256": model_fingerprint(model_path),
        "dim": int(emb.shape[1]),
        "n_items": int(emb.shape[0]),
        "dtype": "float32",
        "row_order": "items.parquet rows (item_id ascending)",
        "item_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        "text": {"version": TEXT_VERSION, "fields": "clean(title). clean(description)", "max_chars": cfg.max_chars,
                 "max_seq_length": cfg.max_seq_length,
                 "empty_description": int(sum(not clean_text(d) for d in items["description"]))},
        "batch_size": cfg.batch_size,
        "items_sha256": sha256_file(data_dir / "items.parquet"),
    }
    with atomic_dir(out) as tmp:
        np.save(tmp / "embeddings.npy", emb)
        meta["embeddings_sha256"] = sha256_file(tmp / "embeddings.npy")
        write_json(tmp / "meta.json", meta)
    log.info("embed %s: %d items in %.1f s", data_dir.name, len(ids), seconds)
    return {**meta, "seconds": round(seconds, 2)}


def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--data-dir", help="read items from this dataset folder instead of <data.out>/<dataset>")
    p.add_argument("--out", help="output folder (default: <embed.out>/<dataset>/embed)")


def run(args, params) -> None:
    cfg = section(params, "embed", EmbedConfig)
    dcfg = section(params, "data", DataConfig)
    for ds in args.dataset or dcfg.datasets:
        data_dir = Path(args.data_dir) if args.data_dir else Path(dcfg.out) / ds
        if not (data_dir / "items.parquet").is_file():
            raise TsrecError("items.parquet not found (run `tsrec data`)", file=data_dir / "items.parquet")
        out = Path(args.out) if args.out else embed_dir(params, ds)
        meta = embed_dataset(cfg, data_dir, out)
        print(f"{ds}: {meta['n_items']} x {meta['dim']} float32 -> {out} ({meta['seconds']} s)")
