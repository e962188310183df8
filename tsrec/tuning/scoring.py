"""A sweep trial's score: HR@K / NDCG@K of its model on a fixed seeded subsample of the valid split, by the
project's constrained beam search (tsrec.model.scoring.evaluate_rows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tsrec.tuning.config import SweepConfig


def valid_rows(data_dir: Path, n: int, seed: int) -> pd.DataFrame:
    """The fixed seeded subsample of ``n`` rows of the valid split under ``data_dir`` (``<data.out>/<DS>``)."""
    from tsrec.data.datasets import load_split
    from tsrec.model.scoring import select_rows

    split = load_split(data_dir, "valid")
    return split.iloc[select_rows(len(split), n, seed)]


def score_valid(run_dir: Path, index_file: Path, prompts_of: Callable[[dict], object], rows: pd.DataFrame,
                cfg: SweepConfig, device: str, precision: str, ranks_file: Path | None = None) -> dict[str, float]:
    """HR@K / NDCG@K of the model in ``run_dir`` (its SID index ``index_file``, its prompts ``prompts_of(meta)``)
    on ``rows``, scored on ``device`` in ``precision``; the row ranks go to ``ranks_file`` (default
    ``<run_dir>/valid_ranks.parquet``: trials can be compared row by row)."""
    from tsrec.data.datasets import load_index
    from tsrec.data.layout import write_row_ranks
    from tsrec.lm.decoding import SidTrie
    from tsrec.model.runs import load_trained
    from tsrec.model.scoring import evaluate_rows
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    model, tokenizer, meta = load_trained(run_dir, index_path=index_file, device=device)
    index, prompts = load_index(index_file), prompts_of(meta)
    ranks, summary = evaluate_rows(
        model, tokenizer, SidTrie.from_index(index, tokenizer, suffix=prompts.eos_suffix), index, rows,
        lambda history: seqrec_prompt(history, prompts, "seqrec"), encode_prompt, beams=cfg.eval_beams,
        batch_size=cfg.eval_batch, desc=f"sweep valid {run_dir.name}", precision=precision)
    write_row_ranks(ranks_file or run_dir / "valid_ranks.parquet", ranks)
    return summary["metrics"]
