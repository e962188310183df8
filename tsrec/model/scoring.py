"""Scoring a model on rows of a split: the evaluate section, the fixed seeded row subsample, constrained beam
search over every row (``evaluate_rows``: ranks of the targets' SIDs and HR@K/NDCG@K), the run's index and
prompt text, and the checks that row ranks are the ones their metrics were written with. Used by the evaluate
stage, the paired command and rl's validation."""

from __future__ import annotations

import dataclasses
import json
import logging
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
from tsrec.lm.decoding import BeamResult, SidTrie, search_batches, shard_batches
from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_dir, commit_group, output_lock, sha256_file
from tsrec.data.layout import write_row_ranks
from tsrec.core.precision import Precision, autocast, check_device
from tsrec.data.sids import sid_str

log = logging.getLogger(__name__)

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
                  precision: str = "fp32", shard: tuple[int, int] = (0, 1)) -> tuple[pd.DataFrame, dict]:
    """Rank the target SID of every row; return per-row ranks and a summary (metrics, counts, timing).

    ``prompt_fn(history SID strings) -> text`` and ``encode(tokenizer, text) -> ids`` must be the ones
    training used (``tsrec.model.tasks.seqrec_prompt`` / ``tsrec.model.tasks.encode_prompt``).
    ``shard = (rank, world)`` under a started process group: each process searches its share of the batches
    (``tsrec.lm.decoding.shard_batches``) and all get every row; the rows are bit-identical to one process
    on the same threads.
    """
    prompts = [encode(tokenizer, prompt_fn([sid_str(index[i]) for i in hist])) for hist in rows["history"]]
    targets = [sid_str(index[int(t)]) for t in rows["target"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    start = time.perf_counter()
    device = next(model.parameters()).device.type
    mine = [i for b in shard_batches([len(p) for p in prompts], batch_size, *shard) for i in b]
    with tqdm(total=len(mine), desc=desc, unit="row", disable=None if shard[0] == 0 else True,
              dynamic_ncols=True) as bar, autocast(precision, device):
        res = search_batches(model, prompts, trie, pad_id=pad_id, num_beams=beams, batch_size=batch_size,
                             progress=bar.update, shard=shard)
    if shard[1] > 1:
        from tsrec.core.distributed import gather_rows

        owned = torch.zeros(len(prompts), dtype=torch.bool)
        owned[mine] = True
        res = BeamResult(*gather_rows(owned, res.sid_ids, res.scores))
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
        "searched": len(mine),  # by this process (all rows but under a multi-process launch)
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


def run_index(run_dir: Path, default: Path) -> Path:
    """The index a run was trained with (its meta), else ``default`` (the index in use for the dataset)."""
    from tsrec.model.runs import META

    meta_file = run_dir / "final" / META
    if meta_file.is_file():
        recorded = json.loads(meta_file.read_text(encoding="utf-8")).get("index_path")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    return default


def run_prompts(meta: dict, default):
    """The prompt text a model was trained with (``tasks`` of its meta), else ``default`` (params' prompts:
    plain models)."""
    from tsrec.core.config import from_dict
    from tsrec.model.tasks import TasksConfig

    trained = (meta.get("params") or {}).get("tasks")
    if trained is not None:
        return from_dict(TasksConfig, trained, "tasks", "tsrec_meta.json").prompts
    return default


# ---------------------------------------------------------------- CLI
def command_line(args, params_file: str | None, command: str = "evaluate") -> str:
    """The equivalent ``tsrec <command>`` command line (explicit options only)."""
    parts = ["tsrec", "--params", params_file or "params.yaml", command]
    for key in ("dataset", "variant", "other", "seed", "run_dir", "model_dir", "index", "split", "subsample", "beams",
                "batch_size", "prompt", "data_dir", "results", "artifacts"):
        value = getattr(args, key, None)
        if value is not None:
            parts += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(parts)


def score_split(model, tokenizer, index_file: Path, prompts, data_dir: Path, cfg: EvaluateConfig, seed: int,
                device: str, desc: str, shard: tuple[int, int] = (0, 1)) -> tuple[pd.DataFrame, dict, dict]:
    """Constrained beam search of ``cfg.split`` (its fixed ``seed``-ed subsample) with the model's prompts ->
    (per-row ranks, the metrics file's numbers, the run record's scoring part); ``shard``: ``evaluate_rows``."""
    from tsrec.core.precision import resolve as resolve_precision
    from tsrec.data.datasets import load_index, load_split
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    index = load_index(index_file)
    trie = SidTrie.from_index(index, tokenizer, suffix=prompts.eos_suffix)
    if cfg.beams > len(trie):
        log.warning("evaluate.beams %d > the %d SIDs of %s: every ranked list holds all %d SIDs and fewer than "
                    "B entries (HR@K for K >= %d is 1.0 by construction)", cfg.beams, len(trie), index_file,
                    len(trie), len(trie))
    split_df = load_split(data_dir, cfg.split)
    missing = sorted({int(i) for h, t in zip(split_df["history"], split_df["target"]) for i in [*h, t]} - set(index))
    if missing:
        raise TsrecError(f"{len(missing)} items of the {cfg.split} split have no SID in the index, e.g. {missing[:5]}",
                         file=index_file)
    rows = split_df.iloc[select_rows(len(split_df), cfg.subsample, seed)]
    if len(rows) < len(split_df):
        log.warning("evaluating a fixed seeded SUBSAMPLE: %d of %d %s rows (seed %d)",
                    len(rows), len(split_df), cfg.split, seed)
    log.info("%s: %s split, %d rows, B=%d, %d SIDs, torch threads %d", desc, cfg.split, len(rows), cfg.beams,
             len(trie), torch.get_num_threads())
    kind = "seqrec" if cfg.prompt == "train" else "paraphrase"

    def prompt_fn(history: list[str]) -> list[str]:
        return seqrec_prompt(history, prompts, kind)

    ranks_df, summary = evaluate_rows(model, tokenizer, trie, index, rows, prompt_fn, encode_prompt, beams=cfg.beams,
                                      batch_size=cfg.batch_size, desc=f"evaluate {desc}",
                                      precision=resolve_precision(cfg.precision, device), shard=shard)
    if summary["invalid_outputs"] or summary["duplicate_outputs"]:
        log.error("invalid or duplicate outputs: %d / %d", summary["invalid_outputs"], summary["duplicate_outputs"])
    numbers = {**summary["metrics"], "n_rows": len(rows), "n_rows_split": len(split_df),
               **{k: summary[k] for k in METRIC_COUNTS}}
    record = {
        "split": cfg.split, "subsample": None if len(rows) == len(split_df) else {"n": len(rows), "seed": seed},
        "beams": cfg.beams, "batch_size": cfg.batch_size, "processes": shard[1], "precision_requested": cfg.precision,
        "prompt": {"kind": cfg.prompt, "eos_suffix": prompts.eos_suffix,
                   "first_row": prompt_fn([sid_str(index[int(i)]) for i in rows["history"].iloc[0]])},
        **{k: v for k, v in summary.items() if k not in ("metrics", "n_rows", "searched", *METRIC_COUNTS)},
        "decoding": "constrained beam search, exact HF semantics (length_penalty=0, full-vocab log-softmax, "
                    "SID then EOS); rank of the target's SID",
        "index": {"path": str(index_file), "sha256": sha256_file(index_file), "items": len(index), "sids": len(trie),
                  "items_sharing_a_sid": sum(len(v) for v in trie.items if len(v) > 1)},
    }
    return ranks_df, numbers, record


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
