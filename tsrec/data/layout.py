"""Where the runs of one (dataset, variant, seed) live (reading them back: tsrec.eval.records).

    artifacts/<DS>/runs/<variant>/seed<N>/{checkpoints,plots,final}   tsrec train --seed N
    artifacts/<DS>/eval/<variant>/seed<N>/ranks*.parquet               tsrec evaluate --seed N (full ranked lists)
    results/<DS>/<variant>/seed<N>/                                    git-tracked:
        train.csv, valid.csv, train_summary.json                       (train)
        metrics*.json, run*.json, ranks*.parquet                       (evaluate; ranks = row, target, rank)
    results/<DS>/baselines/<model>.json, <model>/seed<N>.json    (baseline: dvc metrics, numbers only)
        <model>.run.json, <model>/seed<N>.run.json, <model>/seed<N>.ranks.parquet   (their run records, row ranks)
    artifacts/<DS>/baselines/<model>/fits/<sha>.pt                     (baseline: finished fits of a running
                                                                        stage, for resuming; removed at its end)

The seed folder is always explicit, also for the single default seed. The layout before it (no seed folder)
is moved by ``tsrec migrate-seed-layout`` (tsrec/reporting/migrate.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from tsrec.core.config import section
from tsrec.data.datasets import DataConfig
from tsrec.data.sids import CodebookConfig, codebook_config

SEED_DIR = re.compile(r"^seed(-?\d+)$")
# folders under results/<DS>/ that are not variants
NOT_VARIANTS = frozenset({"baselines", "paired", "sweep", "plots",
                          "bigrec", "d3", "sdpo"})  # the LLM baselines' runs (tsrec.commands.llm_baseline), own rows


def seed_dir(seed: int) -> str:
    return f"seed{int(seed)}"


def seed_of(path: str | Path) -> int | None:
    m = SEED_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def train_run_dir(out: str | Path, ds: str, variant: str, seed: int) -> Path:
    return Path(out) / ds / "runs" / variant / seed_dir(seed)


def eval_dir(artifacts: str | Path, ds: str, variant: str, seed: int) -> Path:
    return Path(artifacts) / ds / "eval" / variant / seed_dir(seed)


def results_dir(results: str | Path, ds: str, variant: str, seed: int) -> Path:
    return Path(results) / ds / variant / seed_dir(seed)


def split_suffix(split: str) -> str:
    """'' for test, '_valid' for valid: ``metrics{suffix}.json``, ``run{suffix}.json``, ``ranks{suffix}.parquet``."""
    return "" if split == "test" else f"_{split}"


def variant_seeds(results: str | Path, ds: str, variant: str, split: str = "test") -> dict[int, Path]:
    """seed -> results folder of every evaluated run of a variant (a ``seed<N>/metrics*.json`` exists)."""
    base = Path(results) / ds / variant
    name = f"metrics{split_suffix(split)}.json"
    found = {seed_of(d): d for d in base.glob("seed*") if d.is_dir() and (d / name).is_file()}
    return dict(sorted((s, d) for s, d in found.items() if s is not None))


def found_variants(results: str | Path, ds: str) -> list[str]:
    """Variants with at least one evaluated seed folder under ``results/<DS>/`` (e.g. ``tsrec+rl``)."""
    base = Path(results) / ds
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir()
                  if d.is_dir() and d.name not in NOT_VARIANTS and variant_seeds(results, ds, d.name))


def old_layout(results: str | Path, ds: str, variant: str) -> bool:
    """True where a variant's files still sit in ``results/<DS>/<variant>/`` without a seed folder."""
    base = Path(results) / ds / variant
    return any((base / f).is_file() for f in ("metrics.json", "train_summary.json", "valid.csv"))


ROW_RANK_COLUMNS = ["row", "target", "rank"]  # the git-tracked ranks beside the metrics (paired tests)


def write_row_ranks(path: str | Path, ranks) -> dict:
    """The slim per-row ranks (``ROW_RANK_COLUMNS`` of a ranks DataFrame) at ``path``; returns the run-record
    entry (path, sha256)."""
    import hashlib
    import io

    from tsrec.core.io import atomic_file

    buf = io.BytesIO()
    ranks[ROW_RANK_COLUMNS].to_parquet(buf, index=False)
    with atomic_file(path, "wb") as fh:  # its sha256 from the bytes: inside a commit_group the file lands last
        fh.write(buf.getvalue())
    return {"path": str(path), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def baseline_summary(results: str | Path, ds: str, model: str) -> Path:
    return Path(results) / ds / "baselines" / f"{model}.json"


def baseline_seed_file(results: str | Path, ds: str, model: str, seed: int) -> Path:
    return Path(results) / ds / "baselines" / model / f"{seed_dir(seed)}.json"


def baseline_ranks(results: str | Path, ds: str, model: str, seed: int) -> Path:
    return Path(results) / ds / "baselines" / model / f"{seed_dir(seed)}.ranks.parquet"


def baseline_fits(work: str | Path, ds: str, model: str) -> Path:
    return Path(work) / ds / "baselines" / model / "fits"


def index_path(codebook: CodebookConfig, data: DataConfig, ds: str) -> Path:
    """The SID index IN USE for ``ds``: the data stage's published index for ``official``."""
    if codebook.use == "official":
        return Path(data.out) / ds / "sid_index.json"
    return Path(codebook.out) / ds / "sid" / codebook.use / "index.json"


def resolve_index(params: dict, ds: str) -> Path:
    """``index_path`` of params' codebook and data sections."""
    return index_path(codebook_config(params), section(params, "data", DataConfig), ds)
