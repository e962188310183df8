"""baseline: Pop, Transition, SASRec, GRU4Rec, Caser, HSTU, TIGER on the same splits; full ranking, TS-Rec's metrics.

The protocol (tuning on valid, one run per seed, files written) is ``tsrec.baselines.protocol``; the section is
``tsrec.baselines.config.BaselinesConfig``; resumable fits ``tsrec.baselines.fits``. ``--table`` only (re)writes
``results/baselines.md`` (``tsrec.baselines.table``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tsrec.baselines.config import BaselinesConfig
from tsrec.baselines.protocol import RunSettings, run_model, write_results
from tsrec.core import pinning
from tsrec.core.config import section
from tsrec.data.layout import baseline_fits, resolve_index


def add_arguments(p) -> None:
    from tsrec.baselines.names import MODELS  # imports nothing: --help loads no torch

    p.add_argument("--model", action="append", choices=MODELS, help="model(s) to run (default: baselines.models)")
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--out", help="results root (default: baselines.out)")
    p.add_argument("--max-rows", type=int, help="smoke runs only: keep the first N rows of every split")
    p.add_argument("--seed", action="append", type=int, help="checks only: these seeds instead of baselines.seeds")
    p.add_argument("--config", action="append", type=int,
                   help="checks only: try only these configs of the tuning grid (0-based, grid order)")
    p.add_argument("--table", action="store_true", help="only (re)write results/baselines.md from the JSONs")


def command_line(args, ds: str, model: str) -> str:
    command = f"tsrec baseline --model {model} --dataset {ds}"
    for flag, values in (("--max-rows", [args.max_rows] if args.max_rows else []),
                         ("--seed", args.seed or []), ("--config", args.config or [])):
        command += "".join(f" {flag} {v}" for v in values)
    return command


def run(args, params) -> None:
    cfg = section(params, "baselines", BaselinesConfig)
    out = Path(args.out or cfg.out)
    datasets = args.dataset or (params.get("data") or {}).get("datasets") or []
    if args.table:
        from tsrec.baselines.table import write_table

        path = write_table(out, datasets)
        print(path.read_text(encoding="utf-8"))
        return
    torch.set_num_threads(cfg.threads)
    repro = pinning.config(params)
    for ds in datasets:
        for model in args.model or cfg.models:
            fits = baseline_fits(cfg.work, ds, model)
            settings = RunSettings(index_file=resolve_index(params, ds), command=command_line(args, ds, model),
                                   repro=repro, params_file=params.get("_path"), max_rows=args.max_rows,
                                   seeds=args.seed, configs=args.config, fits=fits)
            records, summary, row_ranks = run_model(cfg, ds, model, settings)
            path = write_results(out, ds, model, records, summary, row_ranks)
            shutil.rmtree(fits, ignore_errors=True)  # the stage is done: nothing left to resume
            ci = summary["ci95"]
            fmt = lambda k: f"{summary[k]:.4f}" + (f" +- {ci[k]:.4f}" if ci.get(k) is not None else "")  # noqa: E731
            print(f"{ds} {model}: test NDCG@10={fmt('NDCG@10')} item/NDCG@10={fmt('item/NDCG@10')} "
                  f"over {summary['n_runs']} run(s) (valid NDCG@10={summary['valid_NDCG@10']:.4f}, "
                  f"tuning {summary['tuning_wall_s']:.0f} s) -> {path}")
