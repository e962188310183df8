"""migrate-seed-layout: move runs made before per-seed folders into ``seed<N>/`` folders, without retraining
(what moves and how: tsrec.reporting.migrate).

    tsrec migrate-seed-layout [--seed 42] [--dataset DS ...]   # then, as it prints:
    dvc commit -f train@<DS>-<V>-<N> evaluate@<DS>-<V>-<N> ...  # record the moved outputs in dvc.lock
    dvc repro --single-item report                               # the tables read the new folders
    git add -A results dvc.lock && git commit
"""

from __future__ import annotations

import os
from pathlib import Path

from tsrec.core.config import DEFAULT_PARAMS, global_seed, load_params
from tsrec.reporting.migrate import migrate


def add_arguments(p) -> None:
    p.add_argument("--seed", type=int, help="the seed the old runs were trained with (default: the top-level seed)")
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--results", default="results")
    p.add_argument("--artifacts", default=None, help="default: train.out (artifacts)")
    p.add_argument("--dvc-lock", default="dvc.lock", help="drop the old stages' entries here ('' to keep them)")
    p.add_argument("--dry-run", action="store_true", help="only list what would move")


def run(args, params) -> None:
    if not params and Path(os.environ.get("TSREC_PARAMS") or DEFAULT_PARAMS).is_file():
        params = load_params()  # not a pipeline stage: params are read only for defaults
    seed = args.seed if args.seed is not None else global_seed(params)
    datasets = args.dataset or (params.get("data") or {}).get("datasets") or []
    artifacts = args.artifacts or (params.get("train") or {}).get("out") or "artifacts"
    done = migrate(args.results, artifacts, datasets, seed, dvc_lock=args.dvc_lock or None, dry_run=args.dry_run)
    if not done:
        print("nothing to migrate")
        return
    stages = " ".join(f"{st}@{ds}-{v}-{seed}" for ds, v in done for st in ("train", "evaluate"))
    print(("would migrate: " if args.dry_run else "migrated: ") + ", ".join(f"{ds}/{v}" for ds, v in done))
    print(f"next: dvc commit -f {stages}   (records the moved outputs in dvc.lock; no retraining)")
