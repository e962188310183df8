"""codebook: semantic IDs from item embeddings (RQ-VAE, residual k-means) or the published index.

Methods (``codebook.methods``; ``codebook.use`` picks the index downstream stages read):
  official  the published MiniOneRec index (``data/<DS>/sid_index.json``), copied byte for byte
  rqvae     MLP encoder -> ``levels`` residual VQ codebooks (k-means init, dead codes re-seeded) -> decoder
  rqkmeans  residual k-means (scikit-learn) on the embeddings themselves

Collision policy ``reassign_last`` (default): items that share a full SID keep it in order of how
close their last-level residual is to the shared code; every other one moves to the nearest code
of the last level that no item with the same prefix uses. SIDs stay 3 tokens ``<a_><b_><c_>``
(what the decoder's prefix trie and SA-Init expect) and become unique. ``none`` keeps collisions.
Both count the quantiser's raw collisions in the report.

Output per dataset: ``artifacts/<DS>/sid/<method>/{index.json,report.json}`` and the side-by-side
report ``results/<DS>/codebook_report.json`` (a ``dvc metrics`` file of numbers, always with the official index;
command, params, embeddings and per-method settings in ``codebook_report.run.json`` beside it).
"""

from __future__ import annotations

from pathlib import Path

from tsrec.core.config import global_seed, section
from tsrec.core.errors import TsrecError
from tsrec.data.datasets import DataConfig
from tsrec.data.sids import codebook_config
from tsrec.semantics.codebook import build_dataset
from tsrec.semantics.encoder import EmbedConfig, embeddings_path


def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--method", action="append", choices=["official", "rqvae", "rqkmeans"],
                   help="method(s) to build (default: codebook.methods)")


def run(args, params) -> None:
    cfg = codebook_config(params)
    seed = cfg.seed if cfg.seed is not None else global_seed(params)
    dcfg = section(params, "data", DataConfig)
    ecfg = section(params, "embed", EmbedConfig)
    methods = list(dict.fromkeys(args.method or cfg.methods))
    for ds in args.dataset or dcfg.datasets:
        data_dir = Path(dcfg.out) / ds
        if not (data_dir / "items.parquet").is_file():
            raise TsrecError("items.parquet not found (run `tsrec data`)", file=data_dir / "items.parquet")
        command = " ".join(["tsrec", *([f"--params {args.params}"] if args.params else []), "codebook",
                            f"--dataset {ds}", *(f"--method {m}" for m in args.method or [])])
        report = build_dataset(cfg, seed, ds, methods, data_dir=data_dir, emb_path=embeddings_path(ecfg, ds),
                               out_root=Path(cfg.out) / ds / "sid",
                               report_path=Path(cfg.report) / ds / "codebook_report.json", command=command)
        for m, e in report["methods"].items():
            lv = " ".join(f"{k}={v['codes_used']}/{v['codes_available']}" for k, v in e["levels"].items())
            print(f"{ds} {m}: collisions {e['items_sharing_sid']}/{e['items']} ({e['collision_share']:.4f}) "
                  f"used {lv} largest SID group {e['largest_sid_group']}"
                  + (f" (raw collisions {e['raw_before_policy']['items_sharing_sid']})" if "raw_before_policy" in e else ""))
