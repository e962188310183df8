import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from tiny_train import make_params  # noqa: E402

from tsrec.core.errors import ParamError
from tsrec.commands.sweep import run_sweep, scoring_precision
from tsrec.tuning.storage import masked


@pytest.fixture()
def params(tmp_path, tiny_dataset, tiny_backbone):
    p = make_params(tmp_path, tiny_dataset, tiny_backbone)
    p["sweep"] = {"dataset": tiny_dataset.name, "storage": f"sqlite:///{tmp_path}/optuna.db", "n_trials": 2,
                  "pooling": ["mean", "max"], "weight_range": [0.5, 2.0], "eval_rows": 12, "eval_beams": 5,
                  "pruner": {"kind": "threshold", "max_loss": 1000.0, "warmup_steps": 0}, "train": {"max_steps": 2, "eval_steps": 1}, "out": str(tmp_path / "sweep"),
                  "results": str(tmp_path / "results")}
    p["data"]["datasets"] = [tiny_dataset.name]
    return p


def test_sweep_uses_rdb_storage_and_resumes(params, tmp_path):
    df = run_sweep(params)
    assert len(df) == 2 and df["value"].notna().all()
    study = optuna.load_study(study_name="tsrec-sweep-ndcg", storage=params["sweep"]["storage"])
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert len(study.trials) == 2
    trial = study.trials[0]
    # trial 0 is the params' own setting (enqueued), the searched ones follow
    assert trial.user_attrs["enqueued"] == "params defaults"
    assert trial.params == {"source": "keywords", "pooling": "mean", "rescale": True, "levels": "abc",
                            "tsalign_weight": 1.0}
    trial = study.trials[1]
    assert trial.params["pooling"] in ("mean", "max") and 0.5 <= trial.params["tsalign_weight"] <= 2.0
    assert trial.params["levels"] in ("abc", "ab", "a") and trial.params["rescale"] in (True, False)
    # the objective is valid NDCG@10 by beam search over the seeded subsample, ranks kept per trial
    assert trial.value == pytest.approx(trial.user_attrs["valid_NDCG@10"]) and 0 <= trial.value <= 1
    ranks = pd.read_parquet(Path(trial.user_attrs["run_dir"], "valid_ranks.parquet"))
    assert len(ranks) == 12
    assert trial.user_attrs["resumed_from"] is None  # a fresh trial; a retried one names its checkpoint
    assert Path(trial.user_attrs["run_dir"], "final", "tsrec_meta.json").is_file()
    meta = json.loads(Path(trial.user_attrs["run_dir"], "final", "tsrec_meta.json").read_text())
    assert meta["params"]["sainit"]["pooling"] == trial.params["pooling"]
    assert meta["params"]["sainit"]["levels"] == list(trial.params["levels"]) and meta["variant"] == "tsrec"
    assert meta["params"]["tasks"]["tsalign"]["weight"] == pytest.approx(trial.params["tsalign_weight"])
    # asking for 3 complete trials runs exactly one more, and the resumed worker draws a new configuration
    params["sweep"]["n_trials"] = 3
    df = run_sweep(params)
    trials = optuna.load_study(study_name="tsrec-sweep-ndcg", storage=params["sweep"]["storage"]).trials
    assert len(df) == 3 and len(trials) == 3
    assert trials[2].params != trials[1].params
    dest = tmp_path / "results" / params["sweep"]["dataset"] / "sweep"
    summary = json.loads((dest / "sweep.json").read_text())
    assert summary["best"]["value"] == pytest.approx(df["value"].max())
    assert (dest / "history.png").read_bytes()[:4] == b"\x89PNG"
    curve = pd.read_csv(dest / "curves" / "trial1.csv")  # each trial's valid loss, kept beside the study
    assert list(curve.columns) == ["step", "epoch", "eval_loss"] and len(curve) >= 1
    # the best params file is a variant the pipeline takes as it is
    best = yaml.safe_load((dest / "best.yaml").read_text())["sweep_best"]
    assert best["sainit"]["pooling"] == summary["best"]["params"]["pooling"]
    params["variants"]["sweep_best"] = best
    from tsrec.model.runs import variant_params
    from tsrec.model.sainit import config as sainit_config

    assert sainit_config(variant_params(params, "sweep_best")).levels == list(summary["best"]["params"]["levels"])
    # a failed trial that shares trial 1's folder (a stopped copy) gets no curve of its own
    from tsrec.core.config import section
    from tsrec.tuning.config import SweepConfig
    from tsrec.tuning.summary import summarize

    study = optuna.load_study(study_name="tsrec-sweep-ndcg", storage=params["sweep"]["storage"])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=trials[1].params,
                                              distributions=trials[1].distributions, user_attrs=trials[1].user_attrs))
    summarize(study, section(params, "sweep", SweepConfig), params.get("_path"))
    assert (dest / "curves" / "trial1.csv").is_file() and not (dest / "curves" / "trial3.csv").exists()


def test_trial_curve_is_the_trials_own(tmp_path):
    """A trial's curve: its folder's valid.csv when that ends where the trial's reports end (a resumed trial keeps
    its steps before the resume), else the losses the trial reported (the folder was rewritten by a copy)."""
    from tsrec.tuning.summary import trial_curve

    (tmp_path / "plots").mkdir()
    pd.DataFrame({"step": [100, 200, 300], "epoch": [0.1, 0.2, 0.3], "eval_loss": [4.0, 3.5, 3.2]}).to_csv(
        tmp_path / "plots" / "valid.csv", index=False)

    def trial(reported: dict, run_dir=tmp_path):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.05,
                                         intermediate_values=reported, user_attrs={"run_dir": str(run_dir)})

    resumed = trial_curve(trial({200: -3.5, 300: -3.2}), maximize=True)
    assert resumed["step"].tolist() == [100, 200, 300] and "epoch" in resumed
    rewritten = trial_curve(trial({100: -4.1, 200: -3.6, 300: -3.3, 400: -3.1}), maximize=True)
    assert rewritten["step"].tolist() == [100, 200, 300, 400]
    assert rewritten["eval_loss"].tolist() == [4.1, 3.6, 3.3, 3.1]  # the study holds -loss when maximising
    assert trial_curve(trial({400: 3.1}, tmp_path / "gone"), maximize=False)["eval_loss"].tolist() == [3.1]
    assert trial_curve(trial({}, tmp_path / "gone"), maximize=True) is None

    def unreported(steps: int):  # a trial made before the sweep reported intermediate values
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.05,
                                         user_attrs={"run_dir": str(tmp_path), "steps": steps})

    assert trial_curve(unreported(300), maximize=True)["step"].tolist() == [100, 200, 300]
    assert trial_curve(unreported(1200), maximize=True) is None  # the folder holds another run's curve


def test_pruning_callback_stops_a_trial_the_pruner_rejects():
    from tsrec.tuning.study import pruning_callback

    class Trial:
        reports = []

        def report(self, value, step):
            self.reports.append((value, step))

        def should_prune(self):
            return self.reports[-1][1] >= 20

    class State:
        global_step = 10

    trial, state = Trial(), State()
    cb = pruning_callback(trial, maximize=True)
    cb.on_evaluate(None, state, None, metrics={"eval_loss": 2.5})
    assert trial.reports == [(-2.5, 10)]  # negated: the study maximises
    state.global_step = 20
    with pytest.raises(optuna.TrialPruned, match="step 20"):
        cb.on_evaluate(None, state, None, metrics={"eval_loss": 2.4})


def test_default_trial_only_inside_the_search_space(params):
    from tsrec.core.config import section
    from tsrec.commands.sweep import default_trial
    from tsrec.tuning.config import SweepConfig

    cfg = section(params, "sweep", SweepConfig)
    assert default_trial(params, cfg)["pooling"] == "mean"
    params["sainit"] = {**(params.get("sainit") or {}), "pooling": "idf"}  # not in the fixture's [mean, max]
    assert default_trial(params, cfg) is None


def test_bad_sweep_params(params):
    params["sweep"]["pooling"] = ["median"]
    with pytest.raises(ParamError, match="pooling"):
        run_sweep(params)
    params["sweep"]["pooling"] = ["mean"]
    params["sweep"]["train"] = {"max_stpes": 2}
    with pytest.raises(ParamError, match="max_stpes") as exc:
        run_sweep(params)
    assert exc.value.field == "sweep.train"
    params["sweep"]["train"] = {}
    for confirm in ({"variant": ["sweep_best"]}, {"datasets": [], "variants": "sweep_best", "seeds": [42]},
                    {"datasets": [], "variants": [], "seeds": ["42"]}):
        params["sweep"]["confirm"] = confirm
        with pytest.raises(ParamError, match="confirm"):
            run_sweep(params)
    assert not (Path(params["sweep"]["storage"].removeprefix("sqlite:///"))).exists()  # no study, no failed trial


def test_storage_password_is_masked():
    assert "secret" not in masked("postgresql://user:secret@db.example:5432/optuna")


def test_storage_url_from_environment(params, tmp_path, monkeypatch):
    from sqlalchemy.engine import make_url

    from tsrec.core.config import section
    from tsrec.tuning.config import SweepConfig
    from tsrec.tuning.storage import storage_url

    params["sweep"].update(storage_env="TSREC_TEST_STORAGE", n_trials=1)
    with pytest.raises(ParamError, match="TSREC_TEST_STORAGE") as exc:
        run_sweep(params)
    assert exc.value.field == "sweep.storage_env"
    env_db = tmp_path / "from_env.db"
    monkeypatch.setenv("TSREC_TEST_STORAGE", f"sqlite:///{env_db}")
    run_sweep(params)
    assert len(optuna.load_study(study_name="tsrec-sweep-ndcg", storage=f"sqlite:///{env_db}").trials) == 1
    assert not (tmp_path / "optuna.db").exists()  # params' storage not used
    # a password from the environment goes into the URL, never into params or the results
    monkeypatch.setenv("TSREC_TEST_PW", "s3cret")
    cfg = section({"sweep": {"storage": "postgresql://tsrec@db.example:5432/optuna", "password_env": "TSREC_TEST_PW"}},
                  "sweep", SweepConfig)
    url = storage_url(cfg)
    assert make_url(url).password == "s3cret" and make_url(url).username == "tsrec"
    assert "s3cret" not in masked(url)


def test_trials_are_scored_in_the_evaluate_precision(params, monkeypatch):
    import tsrec.core.precision

    monkeypatch.setattr(tsrec.core.precision, "native_bf16", lambda device="cpu": True)  # a native-bf16 CPU
    assert scoring_precision({**params, "evaluate": {"precision": "fp32"}}, "cpu") == "fp32"
    assert scoring_precision({**params, "evaluate": {"precision": "auto"}}, "cpu") == "bf16"


def test_threshold_pruner_stops_only_a_loss_above_the_bound_after_warmup(params):
    from tsrec.core.config import section
    from tsrec.tuning.config import SweepConfig
    from tsrec.tuning.study import make_pruner, pruning_callback

    params["sweep"]["pruner"] = {"kind": "threshold", "max_loss": 3.8, "warmup_steps": 500}
    cfg = section(params, "sweep", SweepConfig)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))

    class State:
        global_step = 400

    healthy, failing = study.ask(), study.ask()
    for trial, loss in ((healthy, 3.46), (failing, 4.18)):
        cb, state = pruning_callback(trial, maximize=True), State()
        cb.on_evaluate(None, state, None, metrics={"eval_loss": loss})  # step 400: before the warmup, kept
        state.global_step = 500
        if loss > 3.8:
            with pytest.raises(optuna.TrialPruned, match="step 500"):
                cb.on_evaluate(None, state, None, metrics={"eval_loss": loss})
        else:
            cb.on_evaluate(None, state, None, metrics={"eval_loss": loss})
    params["sweep"]["pruner"] = {"kind": "threshold", "max_loss": None}
    with pytest.raises(ParamError, match="max_loss"):
        section(params, "sweep", SweepConfig)
