"""Scoring a model on rows of a split: the evaluate section, the fixed seeded row subsample, constrained beam
search over every row (``evaluate_rows``: ranks of the targets' SIDs and HR@K/NDCG@K), the run's index and
prompt text, and the checks that row ranks are the ones their metrics were written with. Used by the evaluate
stage, the paired command and rl's validation."""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tsrec.eval import metrics
from tsrec.lm.decoding import SidTrie, search_batches
from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_dir, commit_group, output_lock, sha256_file
from tsrec.data.layout import write_row_ranks
from tsrec.core.precision import Precision, autocast, check_device
from tsrec.data.sids import sid_str

# counts and timings of evaluate_rows' summary that go to the metrics file (the rest: the run record)
METRIC_COUNTS = ("invalid_outputs", "duplicate_outputs", "rows_with_fewer_than_B_sids", "target_not_in_top_B",
                 "prompt_tokens_mean", "wall_time_s", "rows_per_s")


@dataclasses.dataclass
class EvaluateConfig:
    split: Literal["valid", "test"] = "test"
    beams: int = 20                 # beam width = length of the ranked list (authors: 20)
    batch_size: int = 8             # prompts per beam-search batch (each holds `beams` rows while decoding)
    subsample: int | None = None    # evaluate a fixed seeded random subsample of this many rows (None: all)
    threads: int | None = None      # torch intra-op threads (None: torch default)
    device: str = "auto"            # auto | cpu | cuda | cuda:N (auto: CUDA where torch sees it, else cpu)
    precision: Precision = "fp32"   # auto: bf16 autocast where the hardware has native bf16 (machine-dependent)
    prompt: Literal["train", "paraphrase"] = "train"  # paraphrase: the run's tasks.prompts.paraphrase (authors')

    def validate(self) -> None:
        if self.beams < 1 or self.batch_size < 1:
            raise ValueError("beams and batch_size must be >= 1")
        if self.beams < max(metrics.KS):
            raise ValueError(f"beams must be >= {max(metrics.KS)} to report HR@{max(metrics.KS)}")
        if self.subsample is not None and self.subsample < 1:
            raise ValueError("subsample must be >= 1 or null")
        check_device(self.device)


def select_rows(n: int, subsample: int | None, seed: int) -> np.ndarray:
    """All row positions, or a fixed seeded random subsample of them (sorted)."""
    if subsample is None or subsample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=subsample, replace=False))


def evaluate_rows(model, tokenizer, trie: SidTrie, index: dict[int, list[str]], rows: pd.DataFrame,
                  prompt_fn: Callable[[list[str]], str], encode: Callable[[object, str], list[int]], *,
                  beams: int = 20, batch_size: int = 8, desc: str = "evaluate",
                  precision: str = "fp32") -> tuple[pd.DataFrame, dict]:
    """Rank the target SID of every row; return per-row ranks and a summary (metrics, counts, timing).

    ``prompt_fn(history SID strings) -> text`` and ``encode(tokenizer, text) -> ids`` must be the ones
    training used (``tsrec.model.tasks.seqrec_prompt`` / ``tsrec.model.tasks.encode_prompt``).
    """
    prompts = [encode(tokenizer, prompt_fn([sid_str(index[i]) for i in hist])) for hist in rows["history"]]
    targets = [sid_str(index[int(t)]) for t in rows["target"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    start = time.perf_counter()
    device = next(model.parameters()).device.type
    with tqdm(total=len(prompts), desc=desc, unit="row", disable=None, dynamic_ncols=True) as bar, \
            autocast(precision, device):
        res = search_batches(model, prompts, trie, pad_id=pad_id, num_beams=beams, batch_size=batch_size,
                             progress=bar.update)
    wall = time.perf_counter() - start
    ranked = [[trie.names[s] for s in row if s >= 0] for row in res.sid_ids.tolist()]
    known = set(trie.names)
    invalid = sum(s not in known for lst in ranked for s in lst)  # cannot happen by construction; counted
    duplicate = sum(len(lst) - len(set(lst)) for lst in ranked)
    short = sum(len(lst) < beams for lst in ranked)
    row_ranks = metrics.ranks(ranked, targets)
    out = pd.DataFrame({
        "row": rows.index.to_numpy(), "user_id": rows["user_id"].to_numpy(),
        "target": rows["target"].to_numpy(), "target_sid": targets, "rank": row_ranks,
        "ranked_sids": ranked, "scores": [[round(float(x), 5) for x in sc[:len(lst)]]
                                          for sc, lst in zip(res.scores.tolist(), ranked)],
    })
    summary = {
        "metrics": metrics.from_ranks(row_ranks),
        "n_rows": len(rows),
        "invalid_outputs": invalid,
        "duplicate_outputs": duplicate,
        "rows_with_fewer_than_B_sids": short,
        "target_not_in_top_B": sum(r == metrics.MISSING for r in row_ranks),
        "prompt_tokens_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "precision": precision,
        "wall_time_s": round(wall, 2),
        "rows_per_s": round(len(rows) / wall, 3) if wall > 0 else None,
    }
    return out, summary


def commit_outputs(metrics_file: Path, numbers: dict, record: dict, eval_dir: Path, ranks_name: str,
                   ranks_df) -> None:
    """All outputs as one unit (``tsrec.core.io.commit_group``), by one writer (``output_lock`` on ``eval_dir``): the
    full ranks (under ``eval_dir``, the other split's kept), the slim ones beside the metrics, the metrics and
    the run record naming the sha256 of all three. Everything is written to temps first and only then renamed
    over the previous files, the record last: a full disk or a signal leaves the previous complete outputs,
    and readers (``scoring.check_ranks``, ``tsrec check``) refuse a mix."""
    eval_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(eval_dir), commit_group():
        keep = [p for p in eval_dir.glob("ranks*.parquet") if p.name != ranks_name] if eval_dir.is_dir() else []
        with atomic_dir(eval_dir) as tmp:
            for p in keep:  # the other split's ranks survive
                (tmp / p.name).write_bytes(p.read_bytes())
            ranks_df.to_parquet(tmp / ranks_name, index=False)
            full = {"path": str(eval_dir / ranks_name), "sha256": sha256_file(tmp / ranks_name)}
        record = {**record, "ranks": full, "row_ranks": write_row_ranks(metrics_file.parent / ranks_name, ranks_df)}
        metrics.write_metrics(metrics_file, numbers, record)


# ---------------------------------------------------------------- model / index / prompt plumbing
def load_plain(model_dir: Path, device: str = "cpu"):
    """(model, tokenizer, meta) of a plain HF folder, e.g. an UNTRAINED backbone with SID tokens added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise TsrecError("not a Hugging Face model folder (no config.json)", file=model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    return model.eval(), tok, {"plain_model_dir": str(model_dir), "trained": False}


def run_index(params: dict, ds: str, run_dir: Path) -> Path:
    """The index a run was trained with (its meta), else the index in use for the dataset."""
    from tsrec.data.layout import index_path
    from tsrec.model.runs import META

    meta_file = run_dir / "final" / META
    if meta_file.is_file():
        recorded = json.loads(meta_file.read_text(encoding="utf-8")).get("index_path")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    return index_path(params, ds)


def run_prompts(params: dict, meta: dict):
    """The prompt text a model was trained with (``tasks`` of its meta), else that of params (plain models)."""
    from tsrec.model.tasks import tasks_config

    trained = (meta.get("params") or {}).get("tasks")
    if trained is not None:
        return tasks_config({"tasks": trained, "_path": "tsrec_meta.json"}).prompts
    return tasks_config(params).prompts


# ---------------------------------------------------------------- CLI
def command_line(args, params, command: str = "evaluate") -> str:
    """The equivalent ``tsrec <command>`` command line (explicit options only)."""
    parts = ["tsrec", "--params", params.get("_path", "params.yaml"), command]
    for key in ("dataset", "variant", "other", "seed", "run_dir", "model_dir", "index", "split", "subsample", "beams",
                "batch_size", "prompt", "data_dir", "results", "artifacts"):
        value = getattr(args, key, None)
        if value is not None:
            parts += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(parts)


def check_ranks(ranks_file: Path, metrics_file: Path, key: str = "row_ranks") -> None:
    """Refuse ranks that are not the ones their metrics file was committed with: the metrics file's run record
    must exist, match it (``metrics.verify_record``) and name these ranks' sha256 under ``key`` (``row_ranks``
    for the slim file beside the metrics, ``ranks`` for the full one)."""
    if not metrics_file.is_file():
        raise TsrecError("no metrics file beside the ranks: an incomplete commit (rerun tsrec evaluate)",
                         file=metrics_file)
    want = (metrics.verify_record(metrics_file).get(key) or {}).get("sha256")
    if not want:
        raise TsrecError(f"its run record names no sha256 of the ranks ({key}); rerun tsrec evaluate",
                         file=metrics.run_path(metrics_file))
    if sha256_file(ranks_file) != want:
        raise TsrecError(f"ranks differ from the ones {metrics_file} was written with (rerun tsrec evaluate)",
                         file=ranks_file, field="sha256")
