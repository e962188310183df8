"""embed: frozen sentence-encoder embeddings of every item's cleaned title + description.

Output per dataset (``artifacts/<DS>/embed/``):
  embeddings.npy  float32 [n_items, d], rows in items.parquet order (sorted by item_id)
  meta.json       model spec + resolved folder, dim, counts, sha256 of inputs and output (no timings:
                  the DVC output hash must not change between identical runs; the time is logged)

``encode_texts(texts, model_spec, batch_size)`` is the reusable entry point: other stages (keyword
coherence, ...) embed text with the same frozen model through it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tsrec.core.config import section
from tsrec.core.errors import TsrecError
from tsrec.data.datasets import DataConfig
from tsrec.semantics.encoder import EmbedConfig, embed_dataset, embed_dir

log = logging.getLogger(__name__)


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
        out = Path(args.out) if args.out else embed_dir(cfg, ds)
        meta = embed_dataset(cfg, data_dir, out)
        print(f"{ds}: {meta['n_items']} x {meta['dim']} float32 -> {out} ({meta['seconds']} s)")
