"""The sweep's typed config (section ``sweep``: search space, storage, pruner, budget) and the mapping between
a trial's parameters and a variant's overrides (``sainit``, ``tasks.tsalign``, ``train``)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Literal

from tsrec.model.runs import ExtraRuns
from tsrec.model.sainit import SAInitConfig

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


def default_trial(sa: SAInitConfig, weight: float, cfg: SweepConfig) -> dict[str, Any] | None:
    """The params' own SA-Init (``sa``) and TS-Align weight as trial parameters, or None (with a warning) when a
    value lies outside the search space."""
    weight = float(weight)
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


OBJECTIVE_LABELS = {"valid_ndcg10": "valid NDCG@10", "valid_loss": "valid loss"}
