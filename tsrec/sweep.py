"""sweep: Optuna search over SA-Init pooling/source and the TS-Align loss weight lambda.

Each trial trains the `tsrec` variant with the trial's overrides (and the sweep's short `train`
overrides) and scores it on the valid split. The study lives in an Optuna RDB storage
(`sweep.storage`: sqlite by default; a PostgreSQL/MySQL URL lets many workers, on many machines,
run `tsrec sweep` against one study). A killed worker's trial is retried through Optuna's heartbeat
(`RetryHeartbeatStaleTrialCallback` as the stale-trial callback); the trial's run folder is keyed by its parameters, so the retry
resumes from the last checkpoint. The sweep stops once `n_trials` trials are complete, counted
over all workers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from tsrec.config import section
from tsrec.errors import ParamError
from tsrec.io import atomic_file, sha256_json, write_json

log = logging.getLogger(__name__)

POOLINGS = ("mean", "idf", "max", "contextual")
SOURCES = ("keywords", "description", "both")


@dataclasses.dataclass
class SweepConfig:
    dataset: str = "Industrial_and_Scientific"
    storage: str = "sqlite:///artifacts/optuna/sweep.db"
    storage_env: str | None = None   # NAME of an env var holding the storage URL (overrides storage)
    password_env: str | None = None  # NAME of an env var holding the password to put into the storage URL
    study: str = "tsrec-sainit-tsalign"
    n_trials: int = 4
    objective: str = "valid_loss"  # valid_loss (minimise)
    sampler_seed: int = 42
    pooling: list[str] = dataclasses.field(default_factory=lambda: list(POOLINGS))
    source: list[str] = dataclasses.field(default_factory=lambda: ["keywords"])
    weight_range: list[float] = dataclasses.field(default_factory=lambda: [0.1, 3.0])  # log-uniform
    train: dict = dataclasses.field(default_factory=dict)  # overrides of the train section for trials
    out: str = "artifacts/sweep"
    results: str = "results"
    heartbeat_s: int = 60

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ValueError("n_trials must be >= 1")
        if self.objective != "valid_loss":
            raise ValueError(f"objective must be 'valid_loss', got {self.objective!r}")
        if not self.pooling or set(self.pooling) - set(POOLINGS):
            raise ValueError(f"pooling must be a non-empty subset of {list(POOLINGS)}")
        if not self.source or set(self.source) - set(SOURCES):
            raise ValueError(f"source must be a non-empty subset of {list(SOURCES)}")
        lo_hi = self.weight_range
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"weight_range must be [low, high] with 0 < low <= high, got {lo_hi}")
        if self.heartbeat_s < 1:
            raise ValueError("heartbeat_s must be >= 1")


def trial_overrides(trial, cfg: SweepConfig) -> dict[str, Any]:
    """The variant overrides one trial tries (sections sainit / tasks / train)."""
    lo, hi = cfg.weight_range
    weight = trial.suggest_float("tsalign_weight", lo, hi, log=True) if lo < hi else lo
    return {
        "sainit": {"random": False,
                   "pooling": trial.suggest_categorical("pooling", cfg.pooling),
                   "source": trial.suggest_categorical("source", cfg.source)},
        "tasks": {"tsalign": {"enabled": True, "weight": weight}},
        "train": copy.deepcopy(cfg.train),
    }


def masked(url: str) -> str:
    """The storage URL without its password, for logs and result files."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def storage_url(cfg: SweepConfig, file: str | None = None) -> str:
    """The storage URL: ``storage``, or the value of ``$<storage_env>``; ``$<password_env>`` is put in as its
    password. Secrets stay out of params.yaml and dvc.lock; only the variable names are there."""
    import os

    from sqlalchemy.engine import make_url

    url = cfg.storage
    for key, name in (("storage_env", cfg.storage_env), ("password_env", cfg.password_env)):
        if name and not os.environ.get(name):
            raise ParamError(f"environment variable {name!r} is not set", file=file, field=f"sweep.{key}")
    if cfg.storage_env:
        url = os.environ[cfg.storage_env]
    if cfg.password_env:
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError: the URL itself is never echoed
            raise ParamError(f"storage URL does not parse ({type(exc).__name__})", file=file,
                             field="sweep.storage") from None
        url = parsed.set(password=os.environ[cfg.password_env]).render_as_string(hide_password=False)
    return url


def make_storage(cfg: SweepConfig, url: str | None = None):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    url = url or storage_url(cfg)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=cfg.heartbeat_s, grace_period=2 * cfg.heartbeat_s,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def objective_fn(params: dict, cfg: SweepConfig):
    from tsrec.sft import train_run

    def objective(trial) -> float:
        over = trial_overrides(trial, cfg)
        out = Path(cfg.out) / cfg.dataset / f"sweep-{sha256_json(over)[:12]}"
        trial.set_user_attr("run_dir", str(out))
        meta = train_run(params, cfg.dataset, "tsrec", out=out, overrides=over)
        loss = meta["train"]["best_eval_loss"]
        if loss is None:
            raise RuntimeError(f"trial {trial.number}: training reported no valid loss")
        trial.set_user_attr("steps", meta["train"]["steps"])
        trial.set_user_attr("wall_s", meta["train"]["wall_s"])
        return float(loss)

    return objective


def run_sweep(params: dict) -> pd.DataFrame:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    cfg = section(params, "sweep", SweepConfig)
    if cfg.dataset not in ((params.get("data") or {}).get("datasets") or [cfg.dataset]):
        raise ParamError(f"dataset {cfg.dataset!r} is not in data.datasets", file=params.get("_path"),
                         field="sweep.dataset")
    from tsrec.config import from_dict
    from tsrec.runs import TrainConfig

    # the trials' train overrides, checked now rather than inside the first trial
    from_dict(TrainConfig, {**(params.get("train") or {}), **cfg.train}, "sweep.train", params.get("_path"))
    url = storage_url(cfg, params.get("_path"))
    study = optuna.create_study(
        study_name=cfg.study, storage=make_storage(cfg, url), direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
    )
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    log.info("study %s at %s: %d/%d trials complete", cfg.study, masked(url), done, cfg.n_trials)
    if done < cfg.n_trials:
        study.optimize(objective_fn(params, cfg), n_trials=cfg.n_trials - done,
                       callbacks=[MaxTrialsCallback(cfg.n_trials, states=(TrialState.COMPLETE,))])
    return summarize(study, cfg, params)


def summarize(study, cfg: SweepConfig, params: dict) -> pd.DataFrame:
    df = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    df = df[df["state"] == "COMPLETE"].drop(columns=["state"]).sort_values("value")
    dest = Path(cfg.results) / cfg.dataset / "sweep"
    best = study.best_trial
    write_json(dest / "sweep.json", {
        "command": "tsrec sweep", "params_file": params.get("_path"), "study": cfg.study,
        "objective": f"{cfg.objective} (minimise)",
        "sweep": {**dataclasses.asdict(cfg), "storage": masked(storage_url(cfg))}, "best": {"number": best.number, "value": best.value, "params": best.params},
        "trials": json.loads(df.to_json(orient="records")),
    })
    with atomic_file(dest / "sweep.md") as fh:
        fh.write(f"# Sweep `{cfg.study}` on {cfg.dataset}\n\nObjective: {cfg.objective} (lower is better). "
                 f"Produced by `tsrec sweep` with {params.get('_path')}; train overrides {cfg.train}.\n\n")
        fh.write(df.to_markdown(index=False, floatfmt=".4f") + "\n")
    return df


def add_arguments(p) -> None:
    p.add_argument("--n-trials", type=int, help="override sweep.n_trials (total complete trials wanted)")


def run(args, params) -> None:
    if args.n_trials is not None:
        params = {**params, "sweep": {**(params.get("sweep") or {}), "n_trials": args.n_trials}}
    df = run_sweep(params)
    print(df.to_markdown(index=False, floatfmt=".4f"))
