"""sweep: Optuna search over SA-Init (source, pooling, rescale, levels) and the TS-Align loss weight lambda.

Each trial trains the `tsrec` variant with the trial's overrides on the `train` budget (plateau stopping;
`sweep.train` may override it) and scores it by the project's constrained beam search on a fixed seeded
subsample of the valid split
(`sweep.eval_rows`; objective valid NDCG@10, maximised). An Optuna pruner watches the intermediate valid loss
(reported at every evaluation of the trainer): by default a ThresholdPruner that stops only gross failures, since
early loss ranks healthy runs in reverse (benchmarks/sweep_pruning_signal.py); a MedianPruner is the other choice. The study lives in an Optuna RDB
storage (`sweep.storage`: sqlite by default; a PostgreSQL/MySQL URL lets many workers, on many machines, run
`tsrec sweep` against one study: the study is created once, under a lock (a PostgreSQL advisory lock; a file
lock for sqlite), or beforehand by `tsrec sweep --create`, and each trial's sampler is seeded by (sweep.sampler_seed,
trial number), so workers started together draw different parameters). A killed worker's trial is retried through Optuna's heartbeat
(`RetryHeartbeatStaleTrialCallback`); the trial's run folder is keyed by its parameters, so the retry resumes
from the last checkpoint. The sweep stops once `n_trials` trials are complete, counted over all workers.

Written to `<results>/<DS>/sweep/`: `sweep.json` / `sweep.md` (every trial, its state and values), `curves/`
(each trial's valid-loss curve), the
parameter importances, `history.png` and `importance.png`, and `best.yaml`: the best trial's overrides as
a variant (`variants.sweep_best`), plus the `dvc exp run -S` line that applies them to the defaults.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tsrec.core.config import section
from tsrec.core.errors import ParamError
from tsrec.core.io import atomic_file, sha256_json, write_json
from tsrec.model.runs import ExtraRuns

log = logging.getLogger(__name__)

POOLINGS = ("mean", "idf", "max", "contextual")
SOURCES = ("keywords", "description", "both")


LEVELS = ("abc", "ab", "a")  # SA-Init level sets a trial may pick (sainit.levels)
OBJECTIVES = {"valid_ndcg10": "maximize", "valid_loss": "minimize"}


@dataclasses.dataclass
class PrunerConfig:
    # on the intermediate valid loss: threshold = optuna ThresholdPruner (loss above max_loss), median = MedianPruner
    kind: Literal["threshold", "median", "none"] = "threshold"
    max_loss: float | None = 3.8  # threshold: stop a trial whose valid loss is above this
    startup_trials: int = 4    # median: no pruning until this many trials are complete
    warmup_steps: int = 500    # no pruning before this training step of a trial

    def validate(self) -> None:
        if self.startup_trials < 0 or self.warmup_steps < 0:
            raise ValueError("startup_trials and warmup_steps must be >= 0")
        if self.kind == "threshold" and not (self.max_loss and self.max_loss > 0):
            raise ValueError("kind threshold needs max_loss > 0")


@dataclasses.dataclass
class SweepConfig:
    dataset: str = "Industrial_and_Scientific"
    storage: str = "sqlite:///results/Industrial_and_Scientific/sweep/study.db"  # in git: workspaces may not persist
    storage_env: str | None = None   # NAME of an env var holding the storage URL (overrides storage)
    password_env: str | None = None  # NAME of an env var holding the password to put into the storage URL
    heartbeat_s: int = 60
    study: str = "tsrec-sweep-ndcg"
    n_trials: int = 16
    enqueue_default: bool = True  # trial 0 = the params' own sainit / TS-Align weight (the authors' setting)
    objective: Literal["valid_ndcg10", "valid_loss"] = "valid_ndcg10"
    eval_rows: int = 4000      # fixed seeded valid subsample scored by beam search (results/sweep_design)
    eval_beams: int = 20
    eval_batch: int = 8
    sampler_seed: int = 42
    pooling: list[str] = dataclasses.field(default_factory=lambda: list(POOLINGS))
    source: list[str] = dataclasses.field(default_factory=lambda: list(SOURCES))
    rescale: list[bool] = dataclasses.field(default_factory=lambda: [True, False])
    levels: list[str] = dataclasses.field(default_factory=lambda: list(LEVELS))
    weight_range: list[float] = dataclasses.field(default_factory=lambda: [0.1, 3.0])  # log-uniform
    pruner: PrunerConfig = dataclasses.field(default_factory=PrunerConfig)
    train: dict = dataclasses.field(default_factory=lambda: {"keep_checkpoints": False})  # trials' train overrides
    # the winner's confirmation runs (stages train_confirm / evaluate_confirm): datasets x variants x seeds;
    # sweep_best: best.yaml's block, pasted under params variants (none listed: no such stage)
    confirm: ExtraRuns = dataclasses.field(default_factory=lambda: ExtraRuns(variants=["sweep_best"], seeds=[42, 43, 44]))
    out: str = "artifacts/sweep"
    results: str = "results"

    def validate(self) -> None:
        if self.n_trials < 1 or self.eval_rows < 1 or self.eval_beams < 1 or self.eval_batch < 1:
            raise ValueError("n_trials, eval_rows, eval_beams and eval_batch must be >= 1")
        for name, allowed in (("pooling", POOLINGS), ("source", SOURCES), ("levels", LEVELS)):
            if not getattr(self, name) or set(getattr(self, name)) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {list(allowed)}")
        if not self.rescale:
            raise ValueError("rescale must list true and/or false")
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
                   "source": trial.suggest_categorical("source", cfg.source),
                   "pooling": trial.suggest_categorical("pooling", cfg.pooling),
                   "rescale": trial.suggest_categorical("rescale", cfg.rescale),
                   "levels": list(trial.suggest_categorical("levels", cfg.levels))},
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


def pruning_callback(trial, maximize: bool):
    """A transformers TrainerCallback: reports each valid loss to the trial (negated when the study maximises)
    and stops the trial (optuna.TrialPruned) when the pruner says so."""
    import optuna
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            trial.report(-loss if maximize else loss, state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"valid loss {loss:.4f} at step {state.global_step}")

    return Report()


def scoring_precision(params: dict, device: str) -> str:
    """The precision trials are scored in: the evaluate stage's (``evaluate.precision``), so that every trial and
    the test runs are scored alike whatever the machine (``auto`` would pick bf16 on a native-bf16 CPU only)."""
    from tsrec.core.precision import resolve
    from tsrec.model.scoring import EvaluateConfig

    return resolve(section(params, "evaluate", EvaluateConfig).precision, device)


def score_valid(params: dict, cfg: SweepConfig, run_dir: Path, ranks_file: Path | None = None) -> dict[str, float]:
    """HR@K / NDCG@K of a trial's model on the fixed seeded valid subsample (constrained beam search); the row
    ranks go to ``ranks_file`` (default ``<run_dir>/valid_ranks.parquet``: trials can be compared row by row)."""
    from tsrec.core.config import global_seed
    from tsrec.data.datasets import DataConfig, load_index, load_split
    from tsrec.lm.decoding import SidTrie
    from tsrec.data.layout import write_row_ranks
    from tsrec.core.precision import resolve_device
    from tsrec.model.runs import load_trained
    from tsrec.model.scoring import evaluate_rows, run_index, run_prompts, select_rows
    from tsrec.model.tasks import encode_prompt, seqrec_prompt

    index_file = run_index(params, cfg.dataset, run_dir)
    device = resolve_device("auto")  # the trial was trained where HF Trainer put it: score it there too
    model, tokenizer, meta = load_trained(run_dir, index_path=index_file, device=device)
    index, prompts = load_index(index_file), run_prompts(params, meta)
    split = load_split(Path(section(params, "data", DataConfig).out) / cfg.dataset, "valid")
    rows = split.iloc[select_rows(len(split), cfg.eval_rows, global_seed(params))]
    ranks, summary = evaluate_rows(
        model, tokenizer, SidTrie.from_index(index, tokenizer, suffix=prompts.eos_suffix), index, rows,
        lambda history: seqrec_prompt(history, prompts, "seqrec"), encode_prompt, beams=cfg.eval_beams,
        batch_size=cfg.eval_batch, desc=f"sweep valid {run_dir.name}", precision=scoring_precision(params, device))
    write_row_ranks(ranks_file or run_dir / "valid_ranks.parquet", ranks)
    return summary["metrics"]


def objective_fn(params: dict, cfg: SweepConfig):
    from tsrec.model.sft import train_run

    maximize = OBJECTIVES[cfg.objective] == "maximize"

    def objective(trial) -> float:
        if enough_ahead(trial.study, trial.number, cfg.n_trials):
            trial.set_user_attr("superfluous", f"{cfg.n_trials} trials already complete or running (other workers)")
            trial.study.stop()
            raise EnoughTrials(f"trial {trial.number}: n_trials {cfg.n_trials} already complete or running")
        over = trial_overrides(trial, cfg)
        out = Path(cfg.out) / cfg.dataset / f"sweep-{sha256_json(over)[:12]}"
        trial.set_user_attr("run_dir", str(out))
        callbacks = [pruning_callback(trial, maximize)] if cfg.pruner.kind != "none" else []
        meta = train_run(params, cfg.dataset, "tsrec", out=out, overrides=over, callbacks=callbacks)
        loss = meta["train"]["best_eval_loss"]
        if loss is None:
            raise RuntimeError(f"trial {trial.number}: training reported no valid loss")
        trial.set_user_attr("steps", meta["train"]["steps"])
        trial.set_user_attr("train_wall_s", meta["train"]["wall_s"])  # this sitting's; see resumed_from
        trial.set_user_attr("resumed_from", meta["train"].get("resumed_from"))
        trial.set_user_attr("valid_loss", float(loss))
        if cfg.objective == "valid_loss":
            return float(loss)
        metrics = score_valid(params, cfg, out)
        for k in ("HR@10", "NDCG@10", "NDCG@20"):
            trial.set_user_attr(f"valid_{k}", metrics[k])
        return float(metrics["NDCG@10"])

    return objective


def make_pruner(cfg: SweepConfig):
    import optuna

    if cfg.pruner.kind == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner.kind == "threshold":  # the callback reports the loss negated when the study maximises
        bound = ({"lower": -cfg.pruner.max_loss} if OBJECTIVES[cfg.objective] == "maximize"
                 else {"upper": cfg.pruner.max_loss})
        return optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=cfg.pruner.warmup_steps)
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.startup_trials,
                                       n_warmup_steps=cfg.pruner.warmup_steps)


def trial_seeded_sampler(seed: int):
    """A TPE sampler re-seeded at every trial from ``seed + trial number``. Trial numbers are unique in the study
    (the storage hands them out), so workers started at the same moment draw different parameters, a worker that
    resumes the study draws new ones, and a one-worker study is reproducible from ``sweep.sampler_seed``."""
    import optuna

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self.inner = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial):
            self.inner = optuna.samplers.TPESampler(seed=seed + trial.number)  # TPE's state is only its RNG
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.inner.after_trial(study, trial, state, values)

    return TrialSeeded()


LOCK_KEY = 0x7573_7265_63  # pg_advisory_lock key of study creation ("tsrec")


@contextlib.contextmanager
def creation_lock(url: str):
    """Serialise creating the storage schema and the study across workers: two workers creating them at the same
    moment on a fresh PostgreSQL database crash one (``UniqueViolation ... CREATE TYPE studydirection``,
    optuna/optuna#1092). PostgreSQL: a session advisory lock; sqlite (one machine): a file lock in the temp dir."""
    import tempfile

    from filelock import FileLock
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        finally:
            engine.dispose()
    elif backend == "sqlite" and parsed.database:
        key = sha256_json(str(Path(parsed.database).resolve()))[:16]
        with FileLock(Path(tempfile.gettempdir()) / f"tsrec-sweep-{key}.lock", timeout=600):
            yield
    else:  # other databases: create the study first with `tsrec sweep --create`
        yield


def open_study(params: dict, cfg: SweepConfig, url: str):
    """Create (or load) the study and enqueue the params' defaults once, under ``creation_lock``."""
    import optuna

    with creation_lock(url):
        study = optuna.create_study(
            study_name=cfg.study, storage=make_storage(cfg, url), direction=OBJECTIVES[cfg.objective],
            load_if_exists=True, pruner=make_pruner(cfg), sampler=trial_seeded_sampler(cfg.sampler_seed),
        )
        default = default_trial(params, cfg) if cfg.enqueue_default else None
        if default:  # once per study, whatever the number of workers
            study.enqueue_trial(default, user_attrs={"enqueued": "params defaults"}, skip_if_exists=True)
    return study


def run_sweep(params: dict, create_only: bool = False) -> pd.DataFrame:
    """Run trials until ``n_trials`` are complete over all workers (``create_only``: create the study, run none)."""
    from optuna.trial import TrialState

    cfg = section(params, "sweep", SweepConfig)
    if cfg.dataset not in ((params.get("data") or {}).get("datasets") or [cfg.dataset]):
        raise ParamError(f"dataset {cfg.dataset!r} is not in data.datasets", file=params.get("_path"),
                         field="sweep.dataset")
    from tsrec.core.config import from_dict
    from tsrec.model.runs import TrainConfig

    # the trials' train overrides, checked now rather than inside the first trial
    from_dict(TrainConfig, {**(params.get("train") or {}), **cfg.train}, "sweep.train", params.get("_path"))
    url = storage_url(cfg, params.get("_path"))
    study = open_study(params, cfg, url)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    log.info("study %s at %s: %d/%d trials complete", cfg.study, masked(url), done, cfg.n_trials)
    if create_only:
        return summarize(study, cfg, params)

    def summarize_after(study, trial) -> None:  # a killed worker leaves tables up to its last finished trial
        if trial.state == TrialState.COMPLETE:
            summarize(study, cfg, params)

    if done < cfg.n_trials:
        study.optimize(objective_fn(params, cfg), n_trials=cfg.n_trials - done, catch=(EnoughTrials,),
                       callbacks=[summarize_after, stop_when_enough(cfg.n_trials)])
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if states.count(TrialState.COMPLETE) < cfg.n_trials:
        log.warning("%d/%d trials complete, %d running in other workers (or left by a killed one: a rerun retries "
                    "it)", states.count(TrialState.COMPLETE), cfg.n_trials, states.count(TrialState.RUNNING))
    return summarize(study, cfg, params)


class EnoughTrials(Exception):
    """A trial asked for once ``n_trials`` are complete or running elsewhere: recorded as FAIL (user attr
    ``superfluous``), not trained; optuna's samplers ignore failed trials."""


def enough_ahead(study, number: int | None, n_trials: int) -> bool:
    """``n_trials`` are complete or running with a lower trial number than ``number``. optuna's MaxTrialsCallback
    counts complete trials only, so simultaneous workers overshoot; the lower number breaks ties between two
    workers that ask at the same moment, and a running trial that fails later is made up for by the worker
    that sees it (``stop_when_enough`` checks again after every trial)."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and (number is None or t.number < number))
               for t in study.get_trials(deepcopy=False)) >= n_trials


def stop_when_enough(n_trials: int):
    """Stop this worker once the trials complete or running reach ``n_trials`` (after its summary)."""

    def callback(study, trial) -> None:
        if enough_ahead(study, None, n_trials):  # every running trial counts
            study.stop()

    return callback


def default_trial(params: dict, cfg: SweepConfig) -> dict[str, Any] | None:
    """The params' own SA-Init and TS-Align weight as trial parameters, or None (with a warning) when a value lies
    outside the search space."""
    from tsrec.model.sainit import config as sainit_config
    from tsrec.model.tasks import tasks_config

    sa = sainit_config(params)
    weight = float(tasks_config(params).tsalign.weight)
    trial = {"source": sa.source, "pooling": sa.pooling, "rescale": sa.rescale, "levels": "".join(sa.levels),
             "tsalign_weight": weight}
    lo, hi = cfg.weight_range
    outside = [k for k, allowed in (("source", cfg.source), ("pooling", cfg.pooling), ("rescale", cfg.rescale),
                                    ("levels", cfg.levels)) if trial[k] not in allowed]
    if not lo <= weight <= hi:
        outside.append("tsalign_weight")
    if outside:
        log.warning("params defaults not enqueued: %s outside the search space", ", ".join(outside))
        return None
    if lo == hi:
        del trial["tsalign_weight"]  # not a suggested parameter then
    return trial


def best_variant(study) -> dict[str, Any]:
    """The best trial's overrides as a variant (sainit + TS-Align weight; not the sweep's short budget)."""
    p = study.best_trial.params
    return {"sainit": {"random": False, "source": p["source"], "pooling": p["pooling"], "rescale": p["rescale"],
                       "levels": list(p["levels"])},
            "tasks": {"tsalign": {"enabled": True, "weight": round(float(p.get("tsalign_weight", 1.0)), 4)}}}


def trial_curve(trial, maximize: bool) -> pd.DataFrame | None:
    """A finished trial's valid-loss curve: its run folder's ``plots/valid.csv`` (the whole history, also the
    steps before a resume) when that file ends at the trial's last step (the last it reported, else its recorded
    ``steps``), else the steps the trial reported to the study (a later trial with the same parameters may have
    rewritten the shared folder); None when neither is there."""
    reported = {int(step): (-v if maximize else v) for step, v in trial.intermediate_values.items()}
    last = max(reported) if reported else trial.user_attrs.get("steps")
    path = Path(trial.user_attrs.get("run_dir", "-")) / "plots" / "valid.csv"
    if path.is_file() and last is not None:
        curve = pd.read_csv(path)
        if not curve.empty and int(curve["step"].max()) == int(last):
            return curve
    if not reported:
        return None
    return pd.DataFrame({"step": list(reported), "eval_loss": list(reported.values()),
                         "source": "study intermediate values"}).sort_values("step")


def summarize(study, cfg: SweepConfig, params: dict) -> pd.DataFrame:
    """Trials table, importances, plots and the best params file under ``<results>/<DS>/sweep/``."""
    import optuna
    import yaml

    maximize = OBJECTIVES[cfg.objective] == "maximize"
    df = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    df = df.sort_values("value", ascending=not maximize, na_position="last")
    done = df[df["state"] == "COMPLETE"]
    dest = Path(cfg.results) / cfg.dataset / "sweep"
    dest.mkdir(parents=True, exist_ok=True)
    importances = {}
    if len(done) >= 2:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=cfg.sampler_seed))
        except (RuntimeError, ValueError) as exc:  # e.g. every complete trial has the same value
            log.warning("no parameter importances: %s", exc)
        _plots(study, dest, importances, OBJECTIVE_LABELS[cfg.objective])
    best = study.best_trial if len(done) else None
    variant = best_variant(study) if best else None
    record = {
        "command": "tsrec sweep", "params_file": params.get("_path"), "study": cfg.study,
        "objective": f"{cfg.objective} ({OBJECTIVES[cfg.objective]})",
        "sweep": {**dataclasses.asdict(cfg), "storage": masked(storage_url(cfg))},
        "states": df["state"].value_counts().to_dict(), "importances": importances,
        "best": {"number": best.number, "value": best.value, "params": best.params, "variant": variant} if best else None,
        "trials": json.loads(df.to_json(orient="records")),
    }
    write_json(dest / "sweep.json", record)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for trial in study.get_trials(deepcopy=False, states=finished):
        curve, target = trial_curve(trial, maximize), dest / "curves" / f"trial{trial.number}.csv"
        if curve is None:
            target.unlink(missing_ok=True)  # an earlier summary's copy of a file that is not this trial's
            continue
        target.parent.mkdir(exist_ok=True)
        with atomic_file(target) as fh:
            curve.to_csv(fh, index=False)
    if variant:
        sets = [f"sainit.{k}={json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
                for k, v in variant["sainit"].items()] + [f"tasks.tsalign.weight={variant['tasks']['tsalign']['weight']}"]
        with atomic_file(dest / "best.yaml") as fh:
            fh.write(f"# best trial {best.number} of study {cfg.study}: {cfg.objective} = {best.value:.4f}\n"
                     f"# to confirm it: paste under `variants:` in params.yaml, list sweep_best in sweep.confirm.variants, "
                     f"then `make confirm`;\n"
                     f"# or on the defaults: dvc exp run " + " ".join(f"-S '{x}'" for x in sets) + "\n")
            yaml.safe_dump({"sweep_best": variant}, fh, sort_keys=False)
    with atomic_file(dest / "sweep.md") as fh:
        fh.write(f"# Sweep `{cfg.study}` on {cfg.dataset}\n\nObjective: {cfg.objective} "
                 f"({'higher' if maximize else 'lower'} is better) on {cfg.eval_rows} seeded valid rows. Produced by "
                 f"`tsrec sweep` with {params.get('_path')}; trial budget (train overrides) {cfg.train}; pruner "
                 f"{dataclasses.asdict(cfg.pruner)}.\n\n")
        if importances:
            fh.write("Parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
                     + "\n\n")
        fh.write(df.to_markdown(index=False, floatfmt=".4f") + "\n")
    return done


OBJECTIVE_LABELS = {"valid_ndcg10": "valid NDCG@10", "valid_loss": "valid loss"}


def _plots(study, dest: Path, importances: dict, target_name: str = "objective") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    ax = plot_optimization_history(study, target_name=target_name)
    ax.set_xlabel("trial")
    _save(ax.figure, dest / "history.png")
    if importances:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("fANOVA importance")
        ax.set_title(f"{study.study_name}: parameter importances")
        _save(fig, dest / "importance.png")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def add_arguments(p) -> None:
    p.add_argument("--n-trials", type=int, help="override sweep.n_trials (total complete trials wanted)")
    p.add_argument("--create", action="store_true", help="create the study (and enqueue the params' defaults), "
                   "run no trial: do it once before starting workers on a database that has no lock here")


def run(args, params) -> None:
    if args.n_trials is not None:
        params = {**params, "sweep": {**(params.get("sweep") or {}), "n_trials": args.n_trials}}
    df = run_sweep(params, create_only=args.create)
    print(df.to_markdown(index=False, floatfmt=".4f"))
