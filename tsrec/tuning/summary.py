"""The sweep's files under ``<results>/<DS>/sweep/``: ``sweep.json`` / ``sweep.md`` (every trial, its state and
values), ``curves/`` (each trial's valid-loss curve), the parameter importances, ``history.png`` and
``importance.png``, and ``best.yaml`` (the best trial's overrides as a variant, ``variants.sweep_best``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd

from tsrec.core.io import atomic_file, write_json
from tsrec.tuning.config import OBJECTIVE_LABELS, OBJECTIVES, SweepConfig, best_variant
from tsrec.tuning.storage import masked, storage_url

log = logging.getLogger(__name__)


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


def write_curves(study, dest: Path, maximize: bool) -> None:
    """``curves/trial<N>.csv`` of every finished trial (``trial_curve``); a stale copy is removed."""
    import optuna

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for trial in study.get_trials(deepcopy=False, states=finished):
        curve, target = trial_curve(trial, maximize), dest / "curves" / f"trial{trial.number}.csv"
        if curve is None:
            target.unlink(missing_ok=True)  # an earlier summary's copy of a file that is not this trial's
            continue
        target.parent.mkdir(exist_ok=True)
        with atomic_file(target) as fh:
            curve.to_csv(fh, index=False)


def write_best(path: Path, cfg: SweepConfig, best, variant: dict) -> None:
    """``best.yaml``: the best trial's overrides as the variant ``sweep_best``, with the ``dvc exp run -S`` line
    that applies them to the defaults."""
    import yaml

    sets = [f"sainit.{k}={json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in variant["sainit"].items()] + [f"tasks.tsalign.weight={variant['tasks']['tsalign']['weight']}"]
    with atomic_file(path) as fh:
        fh.write(f"# best trial {best.number} of study {cfg.study}: {cfg.objective} = {best.value:.4f}\n"
                 f"# to confirm it: paste under `variants:` in params.yaml, list sweep_best in sweep.confirm.variants, "
                 f"then `make confirm`;\n"
                 f"# or on the defaults: dvc exp run " + " ".join(f"-S '{x}'" for x in sets) + "\n")
        yaml.safe_dump({"sweep_best": variant}, fh, sort_keys=False)


def summarize(study, cfg: SweepConfig, params_file: str | None) -> pd.DataFrame:
    """Trials table, importances, plots and the best params file under ``<results>/<DS>/sweep/``."""
    import optuna

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
        "command": "tsrec sweep", "params_file": params_file, "study": cfg.study,
        "objective": f"{cfg.objective} ({OBJECTIVES[cfg.objective]})",
        "sweep": {**dataclasses.asdict(cfg), "storage": masked(storage_url(cfg))},
        "states": df["state"].value_counts().to_dict(), "importances": importances,
        "best": {"number": best.number, "value": best.value, "params": best.params, "variant": variant} if best else None,
        "trials": json.loads(df.to_json(orient="records")),
    }
    write_json(dest / "sweep.json", record)
    write_curves(study, dest, maximize)
    if variant:
        write_best(dest / "best.yaml", cfg, best, variant)
    with atomic_file(dest / "sweep.md") as fh:
        fh.write(f"# Sweep `{cfg.study}` on {cfg.dataset}\n\nObjective: {cfg.objective} "
                 f"({'higher' if maximize else 'lower'} is better) on {cfg.eval_rows} seeded valid rows. Produced by "
                 f"`tsrec sweep` with {params_file}; trial budget (train overrides) {cfg.train}; pruner "
                 f"{dataclasses.asdict(cfg.pruner)}.\n\n")
        if importances:
            fh.write("Parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
                     + "\n\n")
        fh.write(df.to_markdown(index=False, floatfmt=".4f") + "\n")
    return done


def _plots(study, dest: Path, importances: dict, target_name: str = "objective") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    ax = plot_optimization_history(study, target_name=target_name)
    ax.set_xlabel("trial")
    save_png(ax.figure, dest / "history.png")
    if importances:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("fANOVA importance")
        ax.set_title(f"{study.study_name}: parameter importances")
        save_png(fig, dest / "importance.png")


def save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
