"""Moving runs made before per-seed folders into ``seed<N>/`` folders, without retraining
(``tsrec migrate-seed-layout``).

Before: results/<DS>/<V>/{metrics*.json,run*.json,train.csv,valid.csv,train_summary.json},
artifacts/<DS>/runs/<V>/{final,checkpoints,plots}, artifacts/<DS>/eval/<V>/ranks*.parquet.
After: the same files under .../<V>/seed<N>/ (tsrec.data.layout), plus what the new layout adds: the slim row ranks
beside each metrics file (from the full ranks, when present), ``seed`` in the metrics file, the moved paths in
the run record (with a ``migrated`` note). The seed each run recorded must be N, else nothing moves.

    tsrec migrate-seed-layout [--seed 42] [--dataset DS ...]   # then, as it prints:
    dvc commit -f train@<DS>-<V>-<N> evaluate@<DS>-<V>-<N> ...  # record the moved outputs in dvc.lock
    dvc repro --single-item report                               # the tables read the new folders
    git add -A results dvc.lock && git commit

It also drops the old stages' entries (``train@<DS>-<V>``, ``evaluate@<DS>-<V>``) from ``--dvc-lock``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from tsrec.data import layout
from tsrec.core.errors import TsrecError
from tsrec.core.io import sha256_file, write_json
from tsrec.eval.metrics import run_path

log = logging.getLogger(__name__)

RESULT_FILES = ("metrics*.json", "run*.json", "train.csv", "valid.csv", "train_summary.json")
RUN_PARTS = ("final", "checkpoints", "plots")


def _files(folder: Path) -> list[Path]:
    return sorted({p for pat in RESULT_FILES for p in folder.glob(pat) if p.is_file()})


def recorded_seeds(files: list[Path]) -> dict[str, int]:
    """file -> the training seed it records (train_summary ``seed``, run record ``model.meta.seed``)."""
    out = {}
    for f in files:
        if f.suffix != ".json":
            continue
        rec = json.loads(f.read_text(encoding="utf-8"))
        seed = rec.get("seed") if f.name == "train_summary.json" else \
            ((rec.get("model") or {}).get("meta") or {}).get("seed")
        if seed is not None:
            out[str(f)] = int(seed)
    return out


def _move(src: Path, dst: Path, dry_run: bool, moved: list) -> None:
    if dst.exists():
        raise TsrecError("destination exists already (migrated before?); nothing moved from here", file=dst)
    moved.append((str(src), str(dst)))
    if not dry_run:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))


def _update_records(dest: Path, old_run: Path, new_run: Path, old_eval: Path, new_eval: Path, seed: int) -> None:
    """Per metrics file in ``dest``: slim row ranks from the full ones, ``seed`` in the metrics, moved paths in
    the run record (the metrics file itself in the older format without a run record)."""
    for mfile in sorted(dest.glob("metrics*.json")):
        suffix = mfile.stem[len("metrics"):]
        record_file = run_path(mfile) if run_path(mfile).is_file() else mfile
        rec = json.loads(record_file.read_text(encoding="utf-8"))
        full = new_eval / f"ranks{suffix}.parquet"
        if full.is_file():
            if (rec.get("ranks") or {}).get("sha256") not in (None, sha256_file(full)):
                raise TsrecError("ranks differ from the ones recorded with the metrics", file=full, field="sha256")
            rec["ranks"] = {"path": str(full), "sha256": sha256_file(full)}
            rec["row_ranks"] = layout.write_row_ranks(dest / f"ranks{suffix}.parquet", pd.read_parquet(full))
        source = (rec.get("model") or {}).get("source") or {}
        if source.get("path") == str(old_run):
            source["path"] = str(new_run)
        rec.setdefault("seed", seed)
        rec["migrated"] = {"by": "tsrec migrate-seed-layout", "from": str(dest.parent),
                           "runs_from": str(old_run), "eval_from": str(old_eval)}
        if record_file != mfile:
            write_json(record_file, rec)
            numbers = json.loads(mfile.read_text(encoding="utf-8"))
        else:
            numbers = rec
        write_json(mfile, {"seed": seed, **{k: v for k, v in numbers.items() if k != "seed"}})


def migrate(results: str | Path, artifacts: str | Path, datasets: list[str], seed: int, *,
            dvc_lock: str | Path | None = None, dry_run: bool = False) -> list[tuple[str, str]]:
    """Move every old-layout run of ``datasets`` into seed folder ``seed``; returns the (dataset, variant)
    pairs moved. Refuses (before moving anything of a pair) a run that recorded another seed."""
    results, artifacts = Path(results), Path(artifacts)
    done = []
    for ds in datasets:
        base = results / ds
        variants = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name not in layout.NOT_VARIANTS
                          and layout.old_layout(results, ds, d.name)) if base.is_dir() else []
        for v in variants:
            files = _files(base / v)
            wrong = {f: s for f, s in recorded_seeds(files).items() if s != seed}
            if wrong:
                f, s = next(iter(wrong.items()))
                raise TsrecError(f"this run recorded seed {s}, not {seed} (pass --seed {s})", file=f, field="seed")
            dest = layout.results_dir(results, ds, v, seed)
            old_run, new_run = artifacts / ds / "runs" / v, layout.train_run_dir(artifacts, ds, v, seed)
            old_eval, new_eval = artifacts / ds / "eval" / v, layout.eval_dir(artifacts, ds, v, seed)
            moved: list = []
            for f in files:
                _move(f, dest / f.name, dry_run, moved)
            for part in RUN_PARTS:
                if (old_run / part).exists():
                    _move(old_run / part, new_run / part, dry_run, moved)
            for f in sorted(old_eval.glob("ranks*.parquet")) if old_eval.is_dir() else []:
                _move(f, new_eval / f.name, dry_run, moved)
            if not dry_run:
                _update_records(dest, old_run, new_run, old_eval, new_eval, seed)
            for src, dst in moved:
                log.info("%s %s -> %s", "would move" if dry_run else "moved", src, dst)
            done.append((ds, v))
    if dvc_lock and not dry_run and Path(dvc_lock).is_file() and done:
        drop_lock_entries(Path(dvc_lock), [f"{stage}@{ds}-{v}" for ds, v in done for stage in ("train", "evaluate")])
    return done


def drop_lock_entries(lock: Path, names: list[str]) -> list[str]:
    """Remove the named stages from a dvc.lock (stages that no longer exist; DVC keeps such entries)."""
    data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    stages = data.get("stages") or {}
    gone = [n for n in names if stages.pop(n, None) is not None]
    if gone:
        tmp = lock.with_name(f".{lock.name}.tmp-{os.getpid()}")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(tmp, lock)
        log.info("dropped %s from %s", ", ".join(gone), lock)
    return gone
