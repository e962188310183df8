"""sweep: Optuna search over SA-Init (source, pooling, rescale, levels) and the TS-Align loss weight lambda.

Each trial trains the `tsrec` variant with the trial's overrides and scores it on a fixed seeded valid
subsample; the study lives in an Optuna RDB storage that many workers can share. How: tsrec.tuning.study
(the study, trials, pruner, workers), tsrec.tuning.summary (the files under ``<results>/<DS>/sweep/``).

This module resolves params into the typed config and the trials' training (``resolve_run`` + ``sft.train_run``)
and scoring (the index and prompts a trial was trained with), passed to the study as callables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsrec.core.config import from_dict, global_seed, section
from tsrec.core.errors import ParamError
from tsrec.data.datasets import DataConfig
from tsrec.tuning import config as tuning_config
from tsrec.tuning.config import SweepConfig
from tsrec.tuning.storage import storage_url
from tsrec.tuning.study import objective_fn, run_study


def scoring_precision(params: dict, device: str) -> str:
    """The precision trials are scored in: the evaluate stage's (``evaluate.precision``), so that every trial and
    the test runs are scored alike whatever the machine (``auto`` would pick bf16 on a native-bf16 CPU only)."""
    from tsrec.core.precision import resolve
    from tsrec.model.scoring import EvaluateConfig

    return resolve(section(params, "evaluate", EvaluateConfig).precision, device)


def score_valid(params: dict, cfg: SweepConfig, run_dir: Path, ranks_file: Path | None = None) -> dict[str, float]:
    """A trial's valid HR@K / NDCG@K (tsrec.tuning.scoring.score_valid) with the index and prompts it was
    trained with, on the evaluate stage's precision."""
    from tsrec.core.precision import resolve_device
    from tsrec.data.layout import resolve_index
    from tsrec.model.scoring import run_index, run_prompts
    from tsrec.model.tasks import tasks_config
    from tsrec.tuning import scoring

    index_file = run_index(run_dir, resolve_index(params, cfg.dataset))
    default_prompts = tasks_config(params).prompts
    device = resolve_device("auto")  # the trial was trained where HF Trainer put it: score it there too
    rows = scoring.valid_rows(Path(section(params, "data", DataConfig).out) / cfg.dataset, cfg.eval_rows,
                              global_seed(params))
    return scoring.score_valid(run_dir, index_file, lambda meta: run_prompts(meta, default_prompts), rows, cfg, device,
                               scoring_precision(params, device), ranks_file)


def train_trial(params: dict, cfg: SweepConfig):
    """A trial's training: the `tsrec` variant with the trial's overrides (tsrec.model.sft.train_run)."""
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    def train(out: Path, overrides: dict, callbacks: list) -> dict:
        return train_run(resolve_run(params, cfg.dataset, "tsrec", out=out, overrides=overrides), callbacks=callbacks)

    return train


def default_trial(params: dict, cfg: SweepConfig) -> dict | None:
    """The params' own SA-Init and TS-Align weight as trial parameters (None outside the search space)."""
    from tsrec.model.sainit import config as sainit_config
    from tsrec.model.tasks import tasks_config

    return tuning_config.default_trial(sainit_config(params), tasks_config(params).tsalign.weight, cfg)


def run_sweep(params: dict, create_only: bool = False) -> pd.DataFrame:
    """Run trials until ``n_trials`` are complete over all workers (``create_only``: create the study, run none)."""
    from tsrec.model.runs import TrainConfig

    cfg = section(params, "sweep", SweepConfig)
    if cfg.dataset not in ((params.get("data") or {}).get("datasets") or [cfg.dataset]):
        raise ParamError(f"dataset {cfg.dataset!r} is not in data.datasets", file=params.get("_path"),
                         field="sweep.dataset")
    # the trials' train overrides, checked now rather than inside the first trial
    from_dict(TrainConfig, {**(params.get("train") or {}), **cfg.train}, "sweep.train", params.get("_path"))
    url = storage_url(cfg, params.get("_path"))
    default = default_trial(params, cfg) if cfg.enqueue_default else None
    objective = objective_fn(cfg, train_trial(params, cfg), lambda run_dir: score_valid(params, cfg, run_dir))
    return run_study(cfg, url, default, objective, params.get("_path"), create_only)


def add_arguments(p) -> None:
    p.add_argument("--n-trials", type=int, help="override sweep.n_trials (total complete trials wanted)")
    p.add_argument("--create", action="store_true", help="create the study (and enqueue the params' defaults), "
                   "run no trial: do it once before starting workers on a database that has no lock here")


def run(args, params) -> None:
    if args.n_trials is not None:
        params = {**params, "sweep": {**(params.get("sweep") or {}), "n_trials": args.n_trials}}
    df = run_sweep(params, create_only=args.create)
    print(df.to_markdown(index=False, floatfmt=".4f"))
