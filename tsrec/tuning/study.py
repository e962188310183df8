"""The sweep's Optuna study (``tsrec sweep``): search over SA-Init (source, pooling, rescale, levels) and the
TS-Align loss weight lambda.

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

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tsrec.core.io import sha256_json
from tsrec.tuning.config import OBJECTIVES, SweepConfig, trial_overrides
from tsrec.tuning.storage import creation_lock, make_storage, masked
from tsrec.tuning.summary import summarize

log = logging.getLogger(__name__)


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


TrainTrial = Callable[[Path, dict, list], dict]  # (run folder, overrides, callbacks) -> the run's train meta
ScoreTrial = Callable[[Path], dict]  # run folder -> valid HR@K / NDCG@K


def objective_fn(cfg: SweepConfig, train: TrainTrial, score: ScoreTrial):
    """The Optuna objective: train the ``tsrec`` variant with the trial's overrides (``train``: the command's call
    into the trainer), then score it on the valid subsample (``score``) unless the objective is the valid loss."""
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
        meta = train(out, over, callbacks)
        loss = meta["train"]["best_eval_loss"]
        if loss is None:
            raise RuntimeError(f"trial {trial.number}: training reported no valid loss")
        trial.set_user_attr("steps", meta["train"]["steps"])
        trial.set_user_attr("train_wall_s", meta["train"]["wall_s"])  # this sitting's; see resumed_from
        trial.set_user_attr("resumed_from", meta["train"].get("resumed_from"))
        trial.set_user_attr("valid_loss", float(loss))
        if cfg.objective == "valid_loss":
            return float(loss)
        metrics = score(out)
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


def open_study(cfg: SweepConfig, url: str, default: dict | None):
    """Create (or load) the study and enqueue ``default`` (the params' own setting) once, under
    ``creation_lock``."""
    import optuna

    with creation_lock(url):
        study = optuna.create_study(
            study_name=cfg.study, storage=make_storage(cfg, url), direction=OBJECTIVES[cfg.objective],
            load_if_exists=True, pruner=make_pruner(cfg), sampler=trial_seeded_sampler(cfg.sampler_seed),
        )
        if default:  # once per study, whatever the number of workers
            study.enqueue_trial(default, user_attrs={"enqueued": "params defaults"}, skip_if_exists=True)
    return study


def run_study(cfg: SweepConfig, url: str, default: dict | None, objective, params_file: str | None,
              create_only: bool = False) -> pd.DataFrame:
    """Run trials of ``objective`` until ``n_trials`` are complete over all workers (``create_only``: create the
    study, run none); the summary files are rewritten after every complete trial. Returns the complete trials."""
    from optuna.trial import TrialState

    study = open_study(cfg, url, default)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    log.info("study %s at %s: %d/%d trials complete", cfg.study, masked(url), done, cfg.n_trials)
    if create_only:
        return summarize(study, cfg, params_file)

    def summarize_after(study, trial) -> None:  # a killed worker leaves tables up to its last finished trial
        if trial.state == TrialState.COMPLETE:
            summarize(study, cfg, params_file)

    if done < cfg.n_trials:
        study.optimize(objective, n_trials=cfg.n_trials - done, catch=(EnoughTrials,),
                       callbacks=[summarize_after, stop_when_enough(cfg.n_trials)])
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if states.count(TrialState.COMPLETE) < cfg.n_trials:
        log.warning("%d/%d trials complete, %d running in other workers (or left by a killed one: a rerun retries "
                    "it)", states.count(TrialState.COMPLETE), cfg.n_trials, states.count(TrialState.RUNNING))
    return summarize(study, cfg, params_file)


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


