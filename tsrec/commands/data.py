"""data: fetch the MiniOneRec Amazon files (mirror or pinned URL), verify, parse to canonical parquet.

Canonical form, one folder per dataset (``data/<DS>/``):
  items.parquet   item_id:int64, title, description, brand, categories (str)
  sid_index.json  the official SID index, published format: {"<item_id>": ["<a_i>", "<b_j>", "<c_k>"]}
  train/valid/test.parquet   user_id:str, history:list<int64> (oldest first), target:int64
  card.json       counts, protocol (official|reconstructed), source, sha256 of inputs and outputs
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from tsrec.core.config import section
from tsrec.data.datasets import DataConfig
from tsrec.data.minionerec import build_dataset

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) to build (default: data.datasets)")
    p.add_argument("--from-raw", nargs=2, metavar=("REVIEWS", "META"),
                   help="build from raw Amazon'18 review + metadata JSON lines instead (see tsrec.data.raw)")
    p.add_argument("--name", help="with --from-raw: output dataset name")
    p.add_argument("--out", help="output root (default: data.out)")


def run(args, params) -> None:
    cfg = section(params, "data", DataConfig)
    out_root = Path(args.out or cfg.out)
    if args.from_raw:
        from tsrec.data.raw import RawConfig, build_from_raw

        card = build_from_raw(Path(args.from_raw[0]), Path(args.from_raw[1]), out_root, args.name or "raw",
                              section(params, "raw", RawConfig))
        print(json.dumps(card["counts"]))
        return
    for ds in args.dataset or cfg.datasets:
        if cfg.source == "synthetic":
            from tsrec.data.synthetic import make_dataset

            make_dataset(out_root / ds, **dataclasses.asdict(cfg.synthetic))
            card = json.loads((out_root / ds / "card.json").read_text(encoding="utf-8"))
        else:
            card = build_dataset(cfg, ds, out_root)
        log.info("%s: %s (%s)", ds, card["counts"], card["protocol"])
        print(f"{ds}: protocol={card['protocol']} " + " ".join(f"{k}={v}" for k, v in card["counts"].items()))
