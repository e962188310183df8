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

``torchrun --nproc_per_node N -m tsrec evaluate ...`` splits the rows: each process searches every N-th
length-sorted batch, rank 0 gathers and writes. A batch is the same in any layout, so the outputs are
bit-identical to one process on the same threads per process (``evaluate.threads`` / ``repro.threads``);
docs/speed.md measures the layouts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path

import torch

from tsrec.core import distributed, pinning
from tsrec.core.config import global_seed, section_with_flags
from tsrec.core.errors import TsrecError
from tsrec.core.io import output_lock
from tsrec.data.layout import eval_dir as eval_folder
from tsrec.data.layout import results_dir, split_suffix
from tsrec.model.scoring import EvaluateConfig, command_line, commit_outputs, load_plain, run_prompts, score_split
from tsrec.model.tasks import tasks_config

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
    ds, variant, suffix = args.dataset, args.variant, split_suffix(cfg.split)
    data_dir = Path(args.data_dir or Path((params.get("data") or {}).get("out", "data")) / ds)
    w = distributed.world()  # under torchrun: each process searches its share of the batches, rank 0 writes
    device = str(distributed.resolve_device(cfg.device, w))  # GPU LOCAL_RANK per process under torchrun
    distributed.init(device)
    lock = output_lock(eval_folder(args.artifacts, ds, variant, run_seed)) if w.main else contextlib.nullcontext()
    with lock:  # one evaluate per run at a time
        model, tokenizer, meta, source, index_file = _load(args, params, data_dir, run_seed, device)
        prompts = run_prompts(meta, tasks_config(params).prompts)
        ranks_df, numbers, record = score_split(model, tokenizer, index_file, prompts, data_dir, cfg, seed, device,
                                                f"{ds}/{variant}", shard=(w.rank, w.size))
        if not w.main:
            return
        numbers = {"seed": run_seed, **numbers}
        record = {"dataset": ds, "variant": variant, "seed": run_seed, **{k: v for k, v in record.items() if k != "index"},
                  "model": {"source": source, "meta": meta}, "index": record["index"], "device": device, "torch_threads": torch.get_num_threads(), "host": platform.machine(),
                  "machine": pinning.record(pinning.config(params), file=params.get("_path")),
                  "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                          if k in os.environ},
                  "command": command_line(args, params.get("_path"))}
        metrics_file = results_dir(args.results, ds, variant, run_seed) / f"metrics{suffix}.json"
        commit_outputs(metrics_file, numbers, record, eval_folder(args.artifacts, ds, variant, run_seed),
                       f"ranks{suffix}.parquet", ranks_df)
    m = {k: numbers[k] for k in numbers if k.startswith(("HR@", "NDCG@"))}
    print(f"{ds}/{variant} {cfg.split} n={numbers['n_rows']}"
          + (" (SUBSAMPLE)" if numbers["n_rows"] < numbers["n_rows_split"] else "") + ": "
          + " ".join(f"{k}={m[k]:.4f}" for k in m) + f" | {numbers['rows_per_s']} rows/s -> {metrics_file}")


def _load(args, params, data_dir: Path, run_seed: int, device: str):
    """(model, tokenizer, meta, source, index file) of the trained run, or of ``--model-dir`` (plain HF model)."""
    from tsrec.data.datasets import DataConfig
    from tsrec.data.layout import index_path, train_run_dir
    from tsrec.data.sids import codebook_config
    from tsrec.model.runs import TrainConfig, load_trained
    from tsrec.core.config import section
    from tsrec.model.scoring import run_index

    if args.model_dir:
        model, tokenizer, meta = load_plain(Path(args.model_dir), device)
        source = {"kind": "plain_model_UNTRAINED_or_external", "path": args.model_dir}
        return model, tokenizer, meta, source, Path(args.index) if args.index else data_dir / "sid_index.json"
    run_dir = Path(args.run_dir) if args.run_dir else train_run_dir(
        section(params, "train", TrainConfig).out, args.dataset, args.variant, run_seed)
    if not run_dir.is_dir():
        raise TsrecError("trained run folder not found (run `tsrec train` or pass --run-dir)", file=run_dir)
    default_index = index_path(codebook_config(params), section(params, "data", DataConfig), args.dataset)
    index_file = Path(args.index) if args.index else run_index(run_dir, default_index)
    model, tokenizer, meta = load_trained(run_dir, index_path=index_file, device=device)  # refuses another index
    return model, tokenizer, meta, {"kind": "trained_run", "path": str(run_dir)}, index_file
