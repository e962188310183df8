"""The equal-budget protocol (issue 37): every run of a comparison trains the same steps under a decaying
schedule, no plateau stop, and is selected by valid ranking measured at fixed points of the budget."""

import csv
from pathlib import Path

import pytest
import yaml
from tiny_train import make_params  # noqa: E402

from tsrec.core.config import section
from tsrec.core.errors import ParamError
from tsrec.model.runs import TrainConfig, variant_params
from tsrec.model.runs import resolve_run
from tsrec.model.sft import train_run

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = {"max_steps": 4, "eval_steps": 2, "schedule": "linear", "warmup_steps": 1, "early_stopping": False,
            "select": "valid_ndcg10", "rank_rows": 6, "rank_beams": 4, "rank_batch": 3}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_budget_run_decays_to_zero_and_is_selected_on_valid_ndcg(tmp_path, tiny_dataset, tiny_backbone):
    params = make_params(tmp_path, tiny_dataset, tiny_backbone, **PROTOCOL)
    meta = train_run(resolve_run(params, tiny_dataset.name, "tsrec", out=tmp_path / "run"))
    t = meta["train"]
    assert t["steps"] == 4 and t["stop_reason"] == "budget" and t["select"] == "valid_ndcg10"
    plots = tmp_path / "run" / "plots"
    ranked = _rows(plots / "valid_rank.csv")
    assert [int(r["step"]) for r in ranked] == [2, 4] and all(int(r["rows"]) == 6 for r in ranked)
    best = max(ranked, key=lambda r: float(r["NDCG@10"]))  # HF keeps the first of equal values
    assert t["best_metric"] == {"name": "eval_ndcg10", "value": pytest.approx(float(best["NDCG@10"]))}
    assert t["best_checkpoint"] == f"checkpoint-{best['step']}"
    per_row = _rows(plots / "valid_rank_rows.csv")
    assert len(per_row) == 2 * 6 and {int(r["step"]) for r in per_row} == {2, 4}
    lrs = [float(r["learning_rate"]) for r in _rows(plots / "train.csv") if r["learning_rate"]]
    # the lr of step k is the schedule at k - 1: linear decay that would reach 0 at step 4 = the budget
    assert lrs[1:] == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])


def test_ranking_evaluation_leaves_the_training_trajectory_alone(tmp_path, tiny_dataset, tiny_backbone):
    runs = {}
    for rank_rows in (0, 6):
        root = tmp_path / f"r{rank_rows}"
        params = make_params(root, tiny_dataset, tiny_backbone,
                             **{**PROTOCOL, "rank_rows": rank_rows, "select": "final"})
        train_run(resolve_run(params, tiny_dataset.name, "tsrec", out=root / "run"))
        runs[rank_rows] = [r["loss"] for r in _rows(root / "run" / "plots" / "train.csv")]
        assert len(_rows(root / "run" / "plots" / "valid_rank.csv")) == (2 if rank_rows else 0)
    assert runs[0] == runs[6]


def test_inconsistent_protocol_settings_are_refused():
    with pytest.raises(ParamError, match="needs rank_rows"):
        section({"train": {"select": "valid_ndcg10", "rank_rows": 0}}, "train", TrainConfig)
    with pytest.raises(ParamError, match="early_stopping"):
        section({"train": {"select": "final", "early_stopping": True}}, "train", TrainConfig)


BUDGET_KEYS = ("max_steps", "epochs", "schedule", "lr", "warmup_steps", "batch_size", "grad_accum", "global_batch",
               "early_stopping", "select", "eval_steps", "rank_rows", "rank_beams", "patience", "min_delta")


def comparison_budgets(params: dict) -> dict[str, tuple]:
    """variant -> its budget and selection settings, for every variant a comparison of params trains (the matrix,
    the extras and the sweep's confirmation runs)."""
    t = params["train"]
    names = [*t["variants"], *t.get("extra", {}).get("variants", []),
             *params.get("sweep", {}).get("confirm", {}).get("variants", [])]
    out = {}
    for v in names:
        cfg = section(variant_params(params, v), "train", TrainConfig)
        out[v] = tuple(getattr(cfg, k) for k in BUDGET_KEYS)
    return out


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/pilot.yaml"])
def test_every_run_of_a_comparison_shares_one_budget_and_schedule(profile):
    params = yaml.safe_load((ROOT / profile).read_text())
    if profile != "params.yaml":  # a profile overlays params.yaml (tsrec.commands.profiles)
        from tsrec.core.config import deep_merge

        params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), params)
    budgets = comparison_budgets(params)
    assert len(set(budgets.values())) == 1, budgets


def test_a_variant_with_its_own_budget_fails_the_check():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["variants"]["sft"] = {**params["variants"]["sft"], "train": {"max_steps": 999}}
    assert len(set(comparison_budgets(params).values())) == 2


# train keys that change no numerics of a run (which runs, where it writes, what it keeps and logs)
RUN_LISTS = {"datasets", "variants", "seeds", "extra", "out", "logging_steps", "save_total_limit", "keep_checkpoints"}


@pytest.mark.parametrize("variant", ["sft", "tsrec"])
def test_the_default_profile_is_the_pilots_chosen_arm(variant):
    """params.yaml trains what the pilot chose: the chosen arm's budget and selection (arms.json), and every knob its
    committed seed-42 run was trained with (its train_summary.json), threads included, so that run is this
    profile's run of that variant and seed."""
    import json

    pilot = ROOT / "results" / "profiles" / "pilot"
    arms = json.loads((pilot / "arms.json").read_text())
    arm = arms["arms"][arms["chosen"]]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ours = variant_params(params, variant)
    assert (ours["train"]["max_steps"], ours["train"]["select"]) == (arm["budget"], arm["select"])
    ran = json.loads((pilot / arms["runs"][arms["chosen"]][variant] / "train_summary.json").read_text())
    assert ran["variant"] == variant and ran["train"]["stop_reason"] == "budget"
    for key in ("sainit", "tasks", "backbone"):
        assert ours[key] == ran["params"][key], key
    strip = lambda t: {k: v for k, v in t.items() if k not in RUN_LISTS}  # noqa: E731
    assert strip(ours["train"]) == strip(ran["params"]["train"])
    machine = ran["train"]["machine"]
    assert (machine["threads"], machine["requested"]) == (params["repro"]["threads"], params["repro"]["cpu_capability"])


def test_every_committed_run_of_a_comparison_trained_the_same_budget():
    """The runs in results/ (matrix, extras, confirmation), not only params.yaml: each recorded the same budget and
    selection settings and trained all of its steps, so the tables compare variants, not stop points."""
    import json

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    t = params["train"]
    names = {*t["variants"], *t["extra"]["variants"], *params["sweep"]["confirm"]["variants"]}
    runs = [f for ds in t["datasets"] for v in sorted(names) for f in (ROOT / "results" / ds / v).glob("seed*/train_summary.json")]
    assert runs, "no committed run of the matrix"
    budgets = {}
    for f in runs:
        rec = json.loads(f.read_text())
        budgets[f.parent.relative_to(ROOT).as_posix()] = (
            tuple(rec["params"]["train"].get(k) for k in BUDGET_KEYS), rec["train"]["steps"], rec["train"]["stop_reason"])
    assert len(set(budgets.values())) == 1, budgets
    (settings, steps, stop), = set(budgets.values())
    assert steps == dict(zip(BUDGET_KEYS, settings))["max_steps"] and stop == "budget"


# ---------------------------------------------------------------- the pilot rule, applied by `tsrec budget`
def _curve_csv(path, ranks_by_step: dict[int, list[int]]):
    import pandas as pd

    rows = [{"step": s, "row": i, "rank": r} for s, ranks in ranks_by_step.items() for i, r in enumerate(ranks)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _ranks(n: int, hits: int, rank: int = 0) -> list[int]:
    """n rows, the first ``hits`` at ``rank``, the rest missed (-1)."""
    return [rank] * hits + [-1] * (n - hits)


def test_budget_rule_picks_the_first_step_within_every_variants_best(tmp_path):
    from tsrec.reporting.budget import budget_report

    n = 1000  # sft saturates at step 200, tsrec at 300; step 100 is far below both
    sft = _curve_csv(tmp_path / "sft" / "plots" / "valid_rank_rows.csv",
                     {100: _ranks(n, 20), 200: _ranks(n, 100), 300: _ranks(n, 100), 400: _ranks(n, 101)})
    tsrec = _curve_csv(tmp_path / "tsrec" / "valid_rank_rows.csv",
                       {100: _ranks(n, 10), 200: _ranks(n, 50), 300: _ranks(n, 110), 400: _ranks(n, 110)})
    rep = budget_report({"sft": sft.parents[1], "tsrec": tsrec.parent}, n_boot=500)
    assert rep["curves"]["sft"]["best_step"] == 400 and rep["curves"]["tsrec"]["best_step"] == 300
    assert [p["within_best"] for p in rep["curves"]["sft"]["points"]] == [False, True, True, True]
    assert [p["within_best"] for p in rep["curves"]["tsrec"]["points"]] == [False, False, True, True]
    assert rep["budget"] == 300 and rep["select"] == "final"


def test_budget_rule_selects_the_best_point_when_the_end_is_worse(tmp_path):
    from tsrec.reporting.budget import budget_report

    n = 1000
    a = _curve_csv(tmp_path / "a.csv", {100: _ranks(n, 100), 200: _ranks(n, 200), 300: _ranks(n, 120)})
    rep = budget_report({"a": a}, n_boot=500)
    assert rep["budget"] == 200 and rep["select"] == "valid_ndcg10"
    assert rep["last_within_best"] == {"a": False}


def test_budget_refuses_curves_over_different_rows(tmp_path):
    import pandas as pd

    from tsrec.core.errors import TsrecError
    from tsrec.reporting.budget import read_points

    path = tmp_path / "valid_rank_rows.csv"
    pd.DataFrame({"step": [1, 1, 2, 2], "row": [0, 1, 0, 2], "rank": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(TsrecError, match="other rows"):
        read_points(path)
    path.write_text("step,row,rank\n")
    with pytest.raises(TsrecError, match="header only"):
        read_points(path)


def test_cli_budget_writes_the_report(tmp_path, capsys):
    import json

    from tsrec import cli

    n = 200
    run = _curve_csv(tmp_path / "run" / "plots" / "valid_rank_rows.csv", {50: _ranks(n, 5), 100: _ranks(n, 60)})
    out = tmp_path / "budget.json"
    assert cli.main(["budget", "--run", f"tsrec={run.parents[1]}", "--bootstrap", "200", "--out", str(out),
                     "--markdown", str(tmp_path / "budget.md"), "--plot", str(tmp_path / "budget.png")]) == 0
    assert json.loads(out.read_text())["budget"] == 100
    assert "Budget B = 100" in capsys.readouterr().out and (tmp_path / "budget.md").is_file()
    assert (tmp_path / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["budget", "--run", "tsrec"]) == 2  # not VARIANT=DIR: one clear error


def _arm(root, curves: dict[str, dict[int, list[int]]]):
    for variant, by_step in curves.items():
        _curve_csv(root / variant / "seed42" / "valid_rank_rows.csv", by_step)
    return root


def test_arms_rule_picks_the_best_fitting_arm_and_sends_ties_to_the_cheaper(tmp_path):
    from tsrec.reporting.budget import compare_arms

    n = 1000
    # arm "long": both variants best at its end (final); arm "short": lower; arm "big": best but too slow
    long_ = _arm(tmp_path / "long", {"sft": {100: _ranks(n, 50), 200: _ranks(n, 120)},
                                     "tsrec": {100: _ranks(n, 60), 200: _ranks(n, 130)}})
    short = _arm(tmp_path / "short", {"sft": {100: _ranks(n, 40), 200: _ranks(n, 60)},
                                      "tsrec": {100: _ranks(n, 40), 200: _ranks(n, 60)}})
    big = _arm(tmp_path / "big", {"sft": {100: _ranks(n, 300), 200: _ranks(n, 300)},
                                  "tsrec": {100: _ranks(n, 300), 200: _ranks(n, 300)}})
    runs = {a: {v: r / v / "seed42" for v in ("sft", "tsrec")} for a, r in
            (("long", long_), ("short", short), ("big", big))}
    rep = compare_arms(runs, {"long": 2.0, "short": 1.0, "big": 9.0}, n_boot=500)
    arms = rep["arms"]
    assert arms["big"]["fits"] is False and rep["best"] == "long" and rep["chosen"] == "long"
    assert arms["long"]["budget"] == 200 and arms["long"]["select"] == "final"
    assert arms["long"]["mean_NDCG@10"] == pytest.approx(0.125)
    lo, hi = arms["short"]["ci95"]
    assert hi < 0 and not arms["short"]["tie"]  # short is measurably below: not a tie
    # a near-copy of "long" that costs less ties with it and wins
    near = _arm(tmp_path / "near", {"sft": {100: _ranks(n, 50), 200: _ranks(n, 119)},
                                    "tsrec": {100: _ranks(n, 60), 200: _ranks(n, 129)}})
    runs["near"] = {v: near / v / "seed42" for v in ("sft", "tsrec")}
    rep = compare_arms(runs, {"long": 2.0, "short": 1.0, "big": 9.0, "near": 1.5}, n_boot=500)
    assert rep["best"] == "long" and rep["arms"]["near"]["tie"] and rep["chosen"] == "near"


def test_arms_rule_keeps_the_best_point_by_b_when_the_end_is_worse(tmp_path):
    from tsrec.reporting.budget import compare_arms

    n = 1000
    a = _arm(tmp_path / "a", {"sft": {100: _ranks(n, 100), 200: _ranks(n, 200), 300: _ranks(n, 120)}})
    rep = compare_arms({"a": {"sft": a / "sft" / "seed42"}}, {"a": 1.0}, n_boot=500)
    assert rep["arms"]["a"]["select"] == "valid_ndcg10" and rep["arms"]["a"]["selected_step"] == {"sft": 200}


def test_cli_budget_compares_arms(tmp_path, capsys):
    import json

    from tsrec import cli

    n = 200
    for arm, hits in (("x", 60), ("y", 20)):
        _arm(tmp_path / arm, {"sft": {50: _ranks(n, 5), 100: _ranks(n, hits)},
                              "tsrec": {50: _ranks(n, 5), 100: _ranks(n, hits)}})
    out = tmp_path / "arms.json"
    argv = ["budget", "--arm", f"x={tmp_path / 'x'}", "--arm", f"y={tmp_path / 'y'}", "--bootstrap", "200",
            "--out", str(out)]
    assert cli.main([*argv, "--cost", "x=2", "--cost", "y=1"]) == 0
    assert json.loads(out.read_text())["chosen"] == "x" and "**x**" in capsys.readouterr().out
    assert cli.main([*argv, "--cost", "x=2"]) == 2  # a cost per arm, or one clear error
    assert cli.main([*argv, "--cost", "x=2", "--cost", "y=1", "--run", f"sft={tmp_path}"]) == 2


def test_a_capped_arm_without_a_common_best_step_takes_its_last_step(tmp_path):
    """sft still rising at the arm's last step while tsrec peaked earlier: rule 1 finds no B. An arm declared
    capped (measured as long as the cost limit allows) takes its last step, marked, with the best point by it."""
    from tsrec.core.errors import TsrecError
    from tsrec.reporting.budget import arms_markdown, compare_arms

    n = 1000
    cap = _arm(tmp_path / "cap", {"sft": {100: _ranks(n, 50), 200: _ranks(n, 150)},
                                  "tsrec": {100: _ranks(n, 150), 200: _ranks(n, 50)}})
    runs = {"cap": {v: cap / v / "seed42" for v in ("sft", "tsrec")}}
    with pytest.raises(TsrecError, match="train longer"):
        compare_arms(runs, {"cap": 2.0}, n_boot=200)
    rep = compare_arms(runs, {"cap": 2.0}, n_boot=200, capped=frozenset({"cap"}))
    arm = rep["arms"]["cap"]
    assert arm["budget"] == 200 and arm["budget_capped"] and arm["select"] == "valid_ndcg10"
    assert arm["selected_step"] == {"sft": 200, "tsrec": 100} and "200 (cap)" in arms_markdown(rep)
    with pytest.raises(TsrecError, match="names no arm"):
        compare_arms(runs, {"cap": 2.0}, n_boot=200, capped=frozenset({"other"}))
