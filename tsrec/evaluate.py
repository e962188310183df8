"""evaluate: constrained beam search over the SID trie on valid/test, HR@K and NDCG@K (REFERENCE.md section 5).

For each row the model reads ``tsrec.tasks.seqrec_prompt(history SIDs, prompts, kind)`` and generates the
top-B distinct SIDs (``tsrec.decoding``). ``prompts`` is the prompt text the run was trained with (its
``tsrec_meta.json``), so a SID is followed by the same suffix and EOS as in training; ``kind`` is
``evaluate.prompt``: ``train`` (the training seqrec prompt) or ``paraphrase`` (the authors' test prompt).
The row's rank is the 0-based position of the TARGET'S SID in that list (a SID stands for all items
sharing it, as in the reference implementations), -1 if absent.

Outputs of the run trained with seed N (test split; the valid split writes ``metrics_valid.json`` /
``run_valid.json`` / ``ranks_valid.parquet``; layout: tsrec.layout):
  results/<DS>/<variant>/seed<N>/metrics.json   dvc metrics: seed, HR@K/NDCG@K, row and output counts, timing
  results/<DS>/<variant>/seed<N>/run.json       its run record: split, subsample, beams, precision, model, index, command
  results/<DS>/<variant>/seed<N>/ranks.parquet  row, target, rank per evaluated row (git-tracked: paired tests)
  artifacts/<DS>/eval/<variant>/seed<N>/ranks.parquet  the same rows with the ranked SIDs and their scores
The subsample (``evaluate.subsample``) is drawn with the top-level ``seed``, not the run's: every run of a
dataset is scored on the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tsrec import metrics
from tsrec.config import section
from tsrec.data import load_index, load_split
from tsrec.decoding import SidTrie, search_batches
from tsrec.errors import TsrecError
from tsrec.io import atomic_dir, sha256_file, write_json
from tsrec.layout import eval_dir as eval_folder, results_dir, split_suffix, variant_seeds, write_row_ranks
from tsrec.precision import Precision, autocast, resolve as resolve_precision

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
    precision: Precision = "auto"   # auto: bf16 autocast where the hardware has native bf16, else fp32
    prompt: Literal["train", "paraphrase"] = "train"  # paraphrase: the run's tasks.prompts.paraphrase (authors')

    def validate(self) -> None:
        if self.beams < 1 or self.batch_size < 1:
            raise ValueError("beams and batch_size must be >= 1")
        if self.beams < max(metrics.KS):
            raise ValueError(f"beams must be >= {max(metrics.KS)} to report HR@{max(metrics.KS)}")
        if self.subsample is not None and self.subsample < 1:
            raise ValueError("subsample must be >= 1 or null")


def select_rows(n: int, subsample: int | None, seed: int) -> np.ndarray:
    """All row positions, or a fixed seeded random subsample of them (sorted)."""
    if subsample is None or subsample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=subsample, replace=False))


def sid_string(tokens: Sequence[str]) -> str:
    return "".join(tokens)


def evaluate_rows(model, tokenizer, trie: SidTrie, index: dict[int, list[str]], rows: pd.DataFrame,
                  prompt_fn: Callable[[list[str]], str], encode: Callable[[object, str], list[int]], *,
                  beams: int = 20, batch_size: int = 8, desc: str = "evaluate",
                  precision: str = "fp32") -> tuple[pd.DataFrame, dict]:
    """Rank the target SID of every row; return per-row ranks and a summary (metrics, counts, timing).

    ``prompt_fn(history SID strings) -> text`` and ``encode(tokenizer, text) -> ids`` must be the ones
    training used (``tsrec.tasks.seqrec_prompt`` / ``tsrec.tasks.encode_prompt``).
    """
    prompts = [encode(tokenizer, prompt_fn([sid_string(index[i]) for i in hist])) for hist in rows["history"]]
    targets = [sid_string(index[int(t)]) for t in rows["target"]]
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


# ---------------------------------------------------------------- model / index / prompt plumbing
def load_plain(model_dir: Path):
    """(model, tokenizer, meta) of a plain HF folder, e.g. an UNTRAINED backbone with SID tokens added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise TsrecError("not a Hugging Face model folder (no config.json)", file=model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), tok, {"plain_model_dir": str(model_dir), "trained": False}


def run_index(params: dict, ds: str, run_dir: Path) -> Path:
    """The index a run was trained with (its meta), else the index in use for the dataset."""
    from tsrec.codebook import index_path
    from tsrec.train import META

    meta_file = run_dir / "final" / META
    if meta_file.is_file():
        recorded = json.loads(meta_file.read_text(encoding="utf-8")).get("index_path")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    return index_path(params, ds)


def run_prompts(params: dict, meta: dict):
    """The prompt text a model was trained with (``tasks`` of its meta), else that of params (plain models)."""
    from tsrec.tasks import tasks_config

    trained = (meta.get("params") or {}).get("tasks")
    if trained is not None:
        return tasks_config({"tasks": trained, "_path": "tsrec_meta.json"}).prompts
    return tasks_config(params).prompts


# ---------------------------------------------------------------- CLI
def command_line(args, params) -> str:
    """The equivalent ``tsrec evaluate`` command line (explicit options only)."""
    parts = ["tsrec", "--params", params.get("_path", "params.yaml"), "evaluate"]
    for key in ("dataset", "variant", "seed", "run_dir", "model_dir", "index", "split", "subsample", "beams",
                "batch_size", "prompt", "data_dir", "results", "artifacts", "paired"):
        value = getattr(args, key, None)
        if value is not None:
            parts += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(parts)


def commit_outputs(metrics_file: Path, numbers: dict, record: dict, eval_dir: Path, ranks_name: str,
                   ranks_df) -> None:
    """metrics.json is the commit record of all outputs: it goes first, the ranks are written (the full ones
    under ``eval_dir``, the slim ones beside the metrics), then the run record (holding both sha256) and the
    metrics come back. A kill in between leaves no metrics (DVC reruns), never a mismatched pair."""
    metrics_file.unlink(missing_ok=True)
    eval_dir.parent.mkdir(parents=True, exist_ok=True)
    keep = [p for p in eval_dir.glob("ranks*.parquet") if p.name != ranks_name] if eval_dir.is_dir() else []
    with atomic_dir(eval_dir) as tmp:
        for p in keep:  # the other split's ranks survive
            (tmp / p.name).write_bytes(p.read_bytes())
        ranks_df.to_parquet(tmp / ranks_name, index=False)
    record = {**record, "ranks": {"path": str(eval_dir / ranks_name), "sha256": sha256_file(eval_dir / ranks_name)},
              "row_ranks": write_row_ranks(metrics_file.parent / ranks_name, ranks_df)}
    metrics.write_metrics(metrics_file, numbers, record)


def check_ranks(ranks_file: Path, metrics_file: Path, key: str = "row_ranks") -> None:
    """Refuse ranks that are not the ones their metrics file was committed with (sha256 under ``key`` in its
    run record: ``row_ranks`` for the slim file beside the metrics, ``ranks`` for the full one)."""
    if not metrics_file.is_file():
        return
    record = metrics.run_path(metrics_file)
    source = record if record.is_file() else metrics_file
    want = (json.loads(source.read_text(encoding="utf-8")).get(key) or {}).get("sha256")
    if want and sha256_file(ranks_file) != want:
        raise TsrecError(f"ranks differ from the ones {metrics_file} was written with (rerun tsrec evaluate)",
                         file=ranks_file, field="sha256")


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder name under data.out")
    p.add_argument("--variant", required=True, help="trained variant (artifacts/<DS>/runs/<variant>) = results label")
    p.add_argument("--seed", type=int, help="training seed of the run (default: the top-level seed); names "
                   "its folders (seed<N>); with --paired: compare only this seed's runs")
    p.add_argument("--run-dir", help="trained run folder (default: <train.out>/<DS>/runs/<variant>/seed<N>)")
    p.add_argument("--model-dir", help="evaluate a plain HF model folder instead of a trained run "
                                       "(e.g. an untrained backbone with SID tokens); labelled as such")
    p.add_argument("--index", help="SID index JSON (default: the one the run was trained with)")
    p.add_argument("--split", choices=["valid", "test"], help="default: evaluate.split")
    p.add_argument("--subsample", type=int, help="fixed seeded random subsample of N rows (default: evaluate.subsample)")
    p.add_argument("--beams", type=int, help="beam width (default: evaluate.beams)")
    p.add_argument("--batch-size", type=int, help="default: evaluate.batch_size")
    p.add_argument("--prompt", choices=["train", "paraphrase"], help="default: evaluate.prompt")
    p.add_argument("--data-dir", help="default: <data.out>/<DS>")
    p.add_argument("--results", default="results", help="results root (metrics JSON)")
    p.add_argument("--artifacts", default="artifacts", help="artifacts root (per-row ranks)")
    p.add_argument("--paired", metavar="OTHER", help="no decoding: compare the saved ranks of --variant with "
                   "those of variant OTHER (same split), pooled over the seeds both have "
                   "-> <results>/<DS>/paired/<variant>_vs_<OTHER>.json")


def run(args, params) -> None:
    overrides = {k: getattr(args, k) for k in ("split", "subsample", "beams", "batch_size", "prompt")
                 if getattr(args, k) is not None}
    raw = {**(params.get("evaluate") or {}), **overrides}
    cfg = section({**params, "evaluate": raw}, "evaluate", EvaluateConfig)
    seed = int(params.get("seed", 42))  # the subsample's and the bootstrap's: the same for every run
    run_seed = seed if args.seed is None else args.seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds, variant = args.dataset, args.variant
    suffix = split_suffix(cfg.split)
    if args.paired:
        return run_paired(args, params, cfg.split, seed)
    data_dir = Path(args.data_dir or Path((params.get("data") or {}).get("out", "data")) / ds)
    if args.model_dir:
        model, tokenizer, meta = load_plain(Path(args.model_dir))
        source = {"kind": "plain_model_UNTRAINED_or_external", "path": args.model_dir}
        index_file = Path(args.index) if args.index else data_dir / "sid_index.json"
    else:
        from tsrec.train import load_trained, run_dir as default_run_dir

        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(params, ds, variant, run_seed)
        if not run_dir.is_dir():
            raise TsrecError("trained run folder not found (run `tsrec train` or pass --run-dir)", file=run_dir)
        index_file = Path(args.index) if args.index else run_index(params, ds, run_dir)
        model, tokenizer, meta = load_trained(run_dir, index_path=index_file)  # refuses another index
        source = {"kind": "trained_run", "path": str(run_dir)}
    index = load_index(index_file)
    prompts = run_prompts(params, meta)
    trie = SidTrie.from_index(index, tokenizer, suffix=prompts.eos_suffix)
    split_df = load_split(data_dir, cfg.split)
    missing = sorted({int(i) for h, t in zip(split_df["history"], split_df["target"]) for i in [*h, t]} - set(index))
    if missing:
        raise TsrecError(f"{len(missing)} items of the {cfg.split} split have no SID in the index, e.g. {missing[:5]}",
                         file=index_file)
    picked = select_rows(len(split_df), cfg.subsample, seed)
    rows = split_df.iloc[picked]
    if len(rows) < len(split_df):
        log.warning("evaluating a fixed seeded SUBSAMPLE: %d of %d %s rows (seed %d)",
                    len(rows), len(split_df), cfg.split, seed)
    log.info("%s/%s: %s split, %d rows, B=%d, %d SIDs, torch threads %d", ds, variant, cfg.split, len(rows),
             cfg.beams, len(trie), torch.get_num_threads())
    from tsrec.tasks import encode_prompt as encode, seqrec_prompt

    kind = "seqrec" if cfg.prompt == "train" else "paraphrase"

    def prompt_fn(history: list[str]) -> list[str]:
        return seqrec_prompt(history, prompts, kind)

    precision = resolve_precision(cfg.precision, next(model.parameters()).device.type)
    ranks_df, summary = evaluate_rows(model, tokenizer, trie, index, rows, prompt_fn, encode, beams=cfg.beams,
                                      batch_size=cfg.batch_size, desc=f"evaluate {ds}/{variant}",
                                      precision=precision)
    if summary["invalid_outputs"] or summary["duplicate_outputs"]:
        log.error("invalid or duplicate outputs: %d / %d", summary["invalid_outputs"], summary["duplicate_outputs"])
    # metrics file: numbers a user compares (dvc metrics show/diff); the run record beside it: the rest
    numbers = {
        "seed": run_seed,
        **summary["metrics"],
        "n_rows": len(rows), "n_rows_split": len(split_df),
        **{k: summary[k] for k in METRIC_COUNTS},
    }
    result = {
        "dataset": ds, "variant": variant, "seed": run_seed, "split": cfg.split,
        "subsample": None if len(rows) == len(split_df) else {"n": len(rows), "seed": seed},
        "beams": cfg.beams, "batch_size": cfg.batch_size, "precision_requested": cfg.precision,
        "prompt": {"kind": cfg.prompt, "eos_suffix": prompts.eos_suffix,
                   "first_row": prompt_fn([sid_string(index[int(i)]) for i in rows["history"].iloc[0]])},
        **{k: v for k, v in summary.items() if k not in ("metrics", "n_rows", *METRIC_COUNTS)},
        "decoding": "constrained beam search, exact HF semantics (length_penalty=0, full-vocab log-softmax, "
                    "SID then EOS); rank of the target's SID",
        "model": {"source": source, "meta": meta},
        "index": {"path": str(index_file), "sha256": sha256_file(index_file), "items": len(index), "sids": len(trie),
                  "items_sharing_a_sid": sum(len(v) for v in trie.items if len(v) > 1)},
        "torch_threads": torch.get_num_threads(), "host": platform.machine(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                if k in os.environ},
        "command": command_line(args, params),
    }
    metrics_file = results_dir(args.results, ds, variant, run_seed) / f"metrics{suffix}.json"
    commit_outputs(metrics_file, numbers, result, eval_folder(args.artifacts, ds, variant, run_seed),
                   f"ranks{suffix}.parquet", ranks_df)
    m = summary["metrics"]
    print(f"{ds}/{variant} {cfg.split} n={len(rows)}" + (" (SUBSAMPLE)" if numbers["n_rows"] < len(split_df) else "") + ": "
          + " ".join(f"{k}={m[k]:.4f}" for k in m) + f" | {summary['rows_per_s']} rows/s -> {metrics_file}")


def run_paired(args, params, split: str, seed: int) -> None:
    """``--paired OTHER``: the saved row ranks of --variant vs OTHER, pooled over the seeds both have."""
    from tsrec.stats import paired_pooled, seed_pairs

    ds, suffix = args.dataset, split_suffix(split)
    runs = {v: variant_seeds(args.results, ds, v, split) for v in (args.variant, args.paired)}
    if args.seed is not None:
        runs = {v: {s: d for s, d in r.items() if s == args.seed} for v, r in runs.items()}
    pairs = seed_pairs(list(runs[args.variant]), list(runs[args.paired]))
    if not pairs:
        raise TsrecError(f"no evaluated runs to pair (seeds {args.variant}: {sorted(runs[args.variant])}, "
                         f"{args.paired}: {sorted(runs[args.paired])}; run tsrec evaluate first)",
                         file=Path(args.results) / ds)
    files = []
    for sa, sb in pairs:
        pair = [runs[args.variant][sa] / f"ranks{suffix}.parquet", runs[args.paired][sb] / f"ranks{suffix}.parquet"]
        for f in pair:
            if not f.is_file():
                raise TsrecError("no saved ranks beside the metrics (rerun tsrec evaluate)", file=f)
            check_ranks(f, f.parent / f"metrics{suffix}.json")
        files.append(pair)
    out = {"dataset": ds, "split": split, "a": args.variant, "b": args.paired, "seeds": [list(p) for p in pairs],
           **paired_pooled([tuple(pd.read_parquet(f) for f in pair) for pair in files], seed=seed),
           "inputs": [[str(f) for f in pair] for pair in files], "command": command_line(args, params)}
    dest = Path(args.results) / ds / "paired" / f"{args.variant}_vs_{args.paired}{suffix}.json"
    write_json(dest, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("inputs", "command")}))
