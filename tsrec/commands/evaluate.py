"""evaluate: constrained beam search over the SID trie on valid/test, HR@K and NDCG@K (REFERENCE.md section 5).

For each row the model reads ``tsrec.model.tasks.seqrec_prompt(history SIDs, prompts, kind)`` and generates the
top-B distinct SIDs (``tsrec.lm.decoding``). ``prompts`` is the prompt text the run was trained with (its
``tsrec_meta.json``), so a SID is followed by the same suffix and EOS as in training; ``kind`` is
``evaluate.prompt``: ``train`` (the training seqrec prompt) or ``paraphrase`` (the authors' test prompt).
The row's rank is the 0-based position of the TARGET'S SID in that list (a SID stands for all items
sharing it, as in the reference implementations), -1 if absent.

Outputs of the run trained with seed N (test split; the valid split writes ``metrics_valid.json`` /
``run_valid.json`` / ``ranks_valid.parquet``; layout: tsrec.data.layout):
  results/<DS>/<variant>/seed<N>/metrics.json   dvc metrics: seed, HR@K/NDCG@K, row and output counts, timing
  results/<DS>/<variant>/seed<N>/run.json       its run record: split, subsample, beams, precision, model, index, command
  results/<DS>/<variant>/seed<N>/ranks.parquet  row, target, rank per evaluated row (git-tracked: paired tests)
  artifacts/<DS>/eval/<variant>/seed<N>/ranks.parquet  the same rows with the ranked SIDs and their scores
The subsample (``evaluate.subsample``) is drawn with the top-level ``seed``, not the run's: every run of a
dataset is scored on the same rows.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import torch

from tsrec.eval import metrics

from tsrec.core import pinning
from tsrec.core.config import global_seed, section_with_flags
from tsrec.data.datasets import load_index, load_split
from tsrec.lm.decoding import SidTrie
from tsrec.core.errors import TsrecError
from tsrec.core.io import output_lock, sha256_file
from tsrec.data.layout import eval_dir as eval_folder
from tsrec.data.layout import results_dir, split_suffix
from tsrec.core.precision import resolve as resolve_precision
from tsrec.core.precision import resolve_device
from tsrec.model.scoring import (
    METRIC_COUNTS,
    EvaluateConfig,
    command_line,
    commit_outputs,
    evaluate_rows,
    load_plain,
    run_index,
    run_prompts,
    select_rows,
)
from tsrec.data.sids import sid_str

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder name under data.out")
    p.add_argument("--variant", required=True, help="trained variant (artifacts/<DS>/runs/<variant>) = results label")
    p.add_argument("--seed", type=int, help="training seed of the run (default: the top-level seed); names "
                   "its folders (seed<N>)")
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


def run(args, params) -> None:
    overrides = {k: getattr(args, k) for k in ("split", "subsample", "beams", "batch_size", "prompt")
                 if getattr(args, k) is not None}
    cfg = section_with_flags(params, "evaluate", EvaluateConfig, overrides)
    seed = global_seed(params)  # the subsample's and the bootstrap's: the same for every run
    run_seed = seed if args.seed is None else args.seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds, variant = args.dataset, args.variant
    data_dir = Path(args.data_dir or Path((params.get("data") or {}).get("out", "data")) / ds)
    device = resolve_device(cfg.device)
    with output_lock(eval_folder(args.artifacts, ds, variant, run_seed)):  # one evaluate per run at a time
        _evaluate(args, params, cfg, seed, run_seed, data_dir, device)


def _evaluate(args, params, cfg: EvaluateConfig, seed: int, run_seed: int, data_dir: Path, device: str) -> None:
    ds, variant, suffix = args.dataset, args.variant, split_suffix(cfg.split)
    if args.model_dir:
        model, tokenizer, meta = load_plain(Path(args.model_dir), device)
        source = {"kind": "plain_model_UNTRAINED_or_external", "path": args.model_dir}
        index_file = Path(args.index) if args.index else data_dir / "sid_index.json"
    else:
        from tsrec.model.runs import load_trained
        from tsrec.model.runs import run_dir as default_run_dir

        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(params, ds, variant, run_seed)
        if not run_dir.is_dir():
            raise TsrecError("trained run folder not found (run `tsrec train` or pass --run-dir)", file=run_dir)
        index_file = Path(args.index) if args.index else run_index(params, ds, run_dir)
        model, tokenizer, meta = load_trained(run_dir, index_path=index_file, device=device)  # refuses another index
        source = {"kind": "trained_run", "path": str(run_dir)}
    index = load_index(index_file)
    prompts = run_prompts(params, meta)
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
    picked = select_rows(len(split_df), cfg.subsample, seed)
    rows = split_df.iloc[picked]
    if len(rows) < len(split_df):
        log.warning("evaluating a fixed seeded SUBSAMPLE: %d of %d %s rows (seed %d)",
                    len(rows), len(split_df), cfg.split, seed)
    log.info("%s/%s: %s split, %d rows, B=%d, %d SIDs, torch threads %d", ds, variant, cfg.split, len(rows),
             cfg.beams, len(trie), torch.get_num_threads())
    from tsrec.model.tasks import encode_prompt as encode
    from tsrec.model.tasks import seqrec_prompt

    kind = "seqrec" if cfg.prompt == "train" else "paraphrase"

    def prompt_fn(history: list[str]) -> list[str]:
        return seqrec_prompt(history, prompts, kind)

    precision = resolve_precision(cfg.precision, device)
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
                   "first_row": prompt_fn([sid_str(index[int(i)]) for i in rows["history"].iloc[0]])},
        **{k: v for k, v in summary.items() if k not in ("metrics", "n_rows", *METRIC_COUNTS)},
        "decoding": "constrained beam search, exact HF semantics (length_penalty=0, full-vocab log-softmax, "
                    "SID then EOS); rank of the target's SID",
        "model": {"source": source, "meta": meta},
        "index": {"path": str(index_file), "sha256": sha256_file(index_file), "items": len(index), "sids": len(trie),
                  "items_sharing_a_sid": sum(len(v) for v in trie.items if len(v) > 1)},
        "device": device, "torch_threads": torch.get_num_threads(), "host": platform.machine(),
        "machine": pinning.record(pinning.config(params), file=params.get("_path")),
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


