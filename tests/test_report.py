"""tsrec report on tiny hand-made results: 1 and 3 seeds, baselines per seed and single-run, missing runs, CSV,
plots."""

import json
import math
import re

import pandas as pd
import pytest
import yaml

from tsrec.cli import main
from tsrec.core.errors import TsrecError
from tsrec.eval.metrics import read_metrics, write_metrics
from tsrec.reporting.tables import ITEM_ONLY, dataset_table

DS = "Industrial_and_Scientific"
T95_2 = 4.302652729911275  # Student t, 0.975 quantile, 2 dof
KEYS = [f"{n}@{k}" for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")]


def _json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _metrics(ndcg10, **over):
    return {**{k: round(ndcg10 / 2, 6) for k in KEYS}, "NDCG@10": ndcg10, **over}


def _ranks(path, ranks):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"row": range(len(ranks)), "target": [7] * len(ranks), "rank": ranks}).to_parquet(path)


def variant(root, v, seed, ndcg10, ranks=None, curve=None, ds=DS):
    d = root / ds / v / f"seed{seed}"
    _json(d / "metrics.json", {"seed": seed, **_metrics(ndcg10, **{"HR@10": ndcg10 * 1.5})})
    if ranks is not None:
        _ranks(d / "ranks.parquet", ranks)
    if curve is not None:
        pd.DataFrame({"step": [10, 20, 30][:len(curve)], "epoch": 0.1, "eval_loss": curve}).to_csv(
            d / "valid.csv", index=False)


def baseline(root, model, seeds_ndcg, ranks=None, deterministic=False, ds=DS):
    seeds = list(seeds_ndcg)
    b = root / ds / "baselines"
    vals = list(seeds_ndcg.values())
    write_metrics(b / f"{model}.json", {**_metrics(sum(vals) / len(vals)), "n_runs": len(seeds)},
                  {"seeds": seeds, "deterministic": deterministic, "command": f"tsrec baseline --model {model}"})
    for s, v in seeds_ndcg.items():
        write_metrics(b / model / f"seed{s}.json", {"seed": s, **_metrics(v)}, {"model": model})
        if ranks is not None:
            _ranks(b / model / f"seed{s}.ranks.parquet", ranks)


TSREC_RANKS = {42: [0, -1, 2, -1], 43: [0, 5, -1, -1], 44: [0, -1, -1, 15]}
SFT_RANKS = {42: [-1, -1, 2, 0], 43: [1, -1, -1, -1], 44: [-1, -1, -1, -1]}


@pytest.fixture()
def three_seeds(tmp_path):
    root = tmp_path / "results"
    for (s, a), b in zip({42: 0.10, 43: 0.12, 44: 0.14}.items(), (0.09, 0.10, 0.12)):
        variant(root, "tsrec", s, a, TSREC_RANKS[s], curve=[3.0 + s / 100, 2.5, 2.4])
        variant(root, "sft", s, b, SFT_RANKS[s], curve=[3.2, 2.9])
    baseline(root, "pop", {42: 0.03}, ranks=[-1, -1, -1, 0], deterministic=True)
    baseline(root, "sasrec", {42: 0.05, 43: 0.06, 44: 0.07})  # no row ranks
    # single-run files (the first baseline runs): no seed files, metrics at the model's native unit
    write_metrics(root / DS / "baselines" / "gru4rec.json", _metrics(0.04), {"seeds": [42], "native_unit": "sid"})
    write_metrics(root / DS / "baselines" / "caser.json", {"item/" + k: v for k, v in _metrics(0.02).items()},
                  {"seeds": [42], "native_unit": "item"})
    _json(root / DS / "no_tsalign" / "metrics.json", _metrics(0.5))  # before seed folders
    return root


def _row(table, prefix):
    return next(r for r in table.shown.to_dict("records") if r["method"].startswith(prefix))


def test_three_seeds_mean_ci_gains_and_tests_by_hand(three_seeds):
    table = dataset_table(three_seeds, DS, [5, 10], variants=["tsrec", "sft", "no_sainit", "no_tsalign"])
    ours = _row(table, "TS-Rec (`tsrec`)")
    half = T95_2 * 0.02 / math.sqrt(3)  # sd of 0.10, 0.12, 0.14 is 0.02
    assert ours["runs"] == "n=3 (42, 43, 44)" and ours["NDCG@10"] == f"0.1200 ± {half:.4f}" == "0.1200 ± 0.0497"
    assert ours["tsrec gain NDCG@10"] == "" and ours["seed test"] == ""
    csv = table.numeric.set_index("method")
    assert csv.loc["TS-Rec (`tsrec`)", "NDCG@10"] == pytest.approx(0.12)
    assert csv.loc["TS-Rec (`tsrec`)", "NDCG@10 ci95"] == pytest.approx(half)

    sft = _row(table, "LC-Rec / MiniOneRec-SFT")
    assert sft["tsrec gain NDCG@10"] == f"{100 * (0.12 / (0.31 / 3) - 1):+.1f} %" == "+16.1 %"
    # paired t over seeds: differences 0.01, 0.02, 0.02 -> t = 5 with 2 dof, p = 1 - t / sqrt(2 + t^2)
    p = 1 - 5 / math.sqrt(27)
    assert sft["seed test"] == f"paired t p={p:.2g} (n=3)"
    assert csv.loc[sft["method"], "seed test p"] == pytest.approx(p)
    # rows pooled over the 3 seed pairs: HR@10 hits per row (tsrec 3,1,1,0 vs sft 1,0,1,1) -> 2 rows for
    # tsrec, 1 for sft, sign p = 2 * P(X <= 1 | n=3) = 1.0; NDCG@10 differences averaged per row
    c = table.comparisons[sft["method"]]["paired"]
    assert (c["HR@10_only_a"], c["HR@10_only_b"], c["HR@10_sign_test_p"], c["pairs"]) == (2, 1, 1.0, 3)
    g = lambda r: 1 / math.log2(r + 2) if 0 <= r < 10 else 0.0  # noqa: E731
    per_row = [sum(g(TSREC_RANKS[s][i]) - g(SFT_RANKS[s][i]) for s in TSREC_RANKS) / 3 for i in range(4)]
    assert c["NDCG@10_diff"] == pytest.approx(sum(per_row) / 4)
    assert sft["paired test (rows)"].startswith(f"Δ {sum(per_row) / 4:+.4f} [") and "3 run pairs, 4 rows" in sft[
        "paired test (rows)"]

    best = _row(table, "SASRec")
    assert best["method"] == "SASRec (best baseline)" and best["tsrec gain NDCG@10"] == "+100.0 %"
    assert best["paired test (rows)"] == "n/a (no row ranks)"
    t = 0.06 / (0.01 / math.sqrt(3))  # tsrec - sasrec per seed: 0.05, 0.06, 0.07
    assert best["seed test"] == f"paired t p={1 - t / math.sqrt(2 + t * t):.2g} (n=3)"
    pop = _row(table, "Pop")
    assert pop["runs"] == "n=1 (deterministic)" and pop["NDCG@10"] == "0.0300"
    assert "3 run pairs" in pop["paired test (rows)"]  # its one run against every seed of tsrec
    t = (0.12 - 0.03) / (0.02 / math.sqrt(3))
    assert pop["seed test"] == f"one-sample t p={1 - t / math.sqrt(2 + t * t):.2g} (n=3)"
    gru = _row(table, "GRU4Rec")
    assert gru["runs"] == "n=1 (42)" and gru["NDCG@10"] == "0.0400" and gru["seed test"] == "n/a (n=1)"
    assert _row(table, "TS-Rec w/o SA-Init")["NDCG@10"] == "not run"
    assert "migrate-seed-layout" in _row(table, "TS-Rec w/o TS-Align")["runs"]
    assert _row(table, "HSTU")["runs"] == "not run" and _row(table, "BIGRec")["runs"].startswith("not run")
    caser = _row(table, "Caser")  # ran, item level only: not in this SID-level table, not "not run"
    assert caser["runs"] == ITEM_ONLY and caser["NDCG@10"] == "—" and caser["tsrec gain NDCG@10"] == ""


def test_one_seed_shows_value_and_n1(tmp_path):
    root = tmp_path / "results"
    variant(root, "tsrec", 42, 0.1, TSREC_RANKS[42])
    variant(root, "sft", 42, 0.08, SFT_RANKS[42])
    table = dataset_table(root, DS, [10])
    ours, sft = _row(table, "TS-Rec (`tsrec`)"), _row(table, "LC-Rec")
    assert ours["runs"] == "n=1 (42)" and ours["NDCG@10"] == "0.1000" and "±" not in ours["HR@10"]
    assert sft["seed test"] == "n/a (n=1)" and sft["tsrec gain NDCG@10"] == "+25.0 %"
    assert "1 run pair, 4 rows" in sft["paired test (rows)"]
    # one pair: the pooled test is the single-run paired comparison of tsrec.eval.stats (McNemar on rows)
    c = table.comparisons[sft["method"]]["paired"]
    assert (c["HR@10_only_a"], c["HR@10_only_b"]) == (1, 1)


def test_rows_of_different_subsamples_are_not_paired(tmp_path):
    root = tmp_path / "results"
    variant(root, "tsrec", 42, 0.1, [0, 1, 2])
    variant(root, "sft", 42, 0.08, [0, 1, 2, 3])
    sft = _row(dataset_table(root, DS, [10]), "LC-Rec")
    assert sft["paired test (rows)"].startswith("n/a (") and "different rows" in sft["paired test (rows)"]


def test_cli_writes_tables_csv_plots_and_survives_missing_runs(three_seeds, tmp_path):
    params = tmp_path / "params.yaml"
    out = three_seeds / "tables.md"
    params.write_text(yaml.safe_dump({
        "seed": 42, "data": {"datasets": [DS, "Office_Products"]},
        "report": {"results": str(three_seeds), "out": str(out), "ks": [1, 3, 5, 10, 20]},
        "variants": {"tsrec": {}, "sft": {}, "no_sainit": {}, "no_tsalign": {}, "tsrec+rl": {}}}))
    assert main(["--params", str(params), "report"]) == 0
    md = out.read_text()
    assert md.count("\n## Office_Products\n") == 1 and "published, official split, Qwen2.5-1.5B, not comparable in " \
                                                     "absolute terms" in md
    assert "TS-Rec variant `tsrec+rl`" in md  # declared, not run
    assert "paired over rows, ranks pooled over seeds" in md and "paired t-test over seeds" in md  # tests named
    office = md.split("\n## Office_Products\n")[1]
    assert re.search(r"\| TS-Rec \(`tsrec`\) +\| not run +\|", office)
    assert re.search(r"\| TS-Rec \(`tsrec`\) +\| n=3 \(42, 43, 44\) .*\| Industrial_and_Scientific/tsrec/seed\{42,43,44\}"
                     r"/metrics.json +\|", md)
    for ds in (DS, "Office_Products"):
        for name in ("valid_loss.png", "hr_at_k.png"):
            assert (three_seeds / ds / "plots" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"({ds}/plots/valid_loss.png)" in md
    csv = pd.read_csv(three_seeds / DS / "table.csv")
    assert set(csv["kind"]) == {"baseline", "variant", "published"}  # BIGRec, D3, S-DPO: LLM baselines, not run
    assert csv.set_index("method").loc["D3", "kind"] == "baseline"
    pub = csv[csv["kind"] == "published"].set_index("method")
    assert pub.loc["MiniOneRec (published, official split, Qwen2.5-1.5B, not comparable in absolute terms)",
                   "NDCG@10"] == 0.1167
    assert csv.set_index("method").loc["TS-Rec (`tsrec`)", "n_runs"] == 3
    assert (three_seeds / "baselines.md").is_file()


def test_bad_metrics_files(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{")
    with pytest.raises(TsrecError, match="invalid JSON"):
        read_metrics(p)
    p.write_text(json.dumps({"loss": 1}))
    with pytest.raises(TsrecError, match="no HR@K"):
        read_metrics(p)


def test_rl_curves_plot_only_where_rl_ran(tmp_path):
    from tsrec.reporting.plots import plot_rl, rl_variants

    ds = tmp_path / "DS"
    (ds / "sft" / "seed42").mkdir(parents=True)
    assert rl_variants(tmp_path, "DS") == []
    for seed in (42, 43):
        d = ds / "sft_rl" / f"seed{seed}"
        d.mkdir(parents=True)
        pd.DataFrame({"step": [1, 2, 3], "kl": [0.0, 0.1, 0.2], "reward_rule": [0.0, 0.5, 1.0],
                      "reward_ranking": [0.0, -0.1, -0.2]}).to_csv(d / "rl.csv", index=False)
        pd.DataFrame({"step": [0, 3], "NDCG@10": [0.05, 0.06], "HR@10": [0.1, 0.1]}).to_csv(d / "rl_valid.csv",
                                                                                          index=False)
    assert rl_variants(tmp_path, "DS") == ["sft_rl"]
    out = plot_rl(tmp_path, "DS", ["sft_rl"], tmp_path / "rl.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_curves_plot_the_learned_models_against_the_floors(tmp_path, monkeypatch):
    from tsrec.reporting import plots as report

    base = tmp_path / "DS" / "baselines"
    assert report.plot_baseline_curves(tmp_path, "DS", tmp_path / "none.png") is None  # nothing ran yet
    write_metrics(base / "pop" / "seed42.json", {"seed": 42, "valid": {"NDCG@10": 0.05}}, {"curve": None})
    write_metrics(base / "transition" / "seed42.json", {"seed": 42, "valid": {"NDCG@10": 0.09}}, {"curve": None})
    for floor in ("pop", "transition"):  # the summaries name the seed files that count
        write_metrics(base / f"{floor}.json", {"n_runs": 1}, {"seeds": [42]})
    assert report.plot_baseline_curves(tmp_path, "DS", tmp_path / "none.png") is None  # floors only: no curve
    for seed, peak in ((42, 0.07), (43, 0.08)):
        curve = [{"epoch": 1, "train_loss": 5.0}, {"epoch": 2, "train_loss": 4.0, "valid_NDCG@10": peak}]
        write_metrics(base / "gru4rec" / f"seed{seed}.json", {"seed": seed, "valid": {"NDCG@10": peak}},
                      {"curve": curve, "valid_rows_early_stopping": 100})
    write_metrics(base / "gru4rec.json", {"n_runs": 2}, {"seeds": [42, 43]})
    drawn = {}
    real_save = report.save_png

    def spy(fig, path):
        ax = fig.axes[0]
        drawn["lines"] = [(line.get_label(), list(line.get_ydata())) for line in ax.lines]
        return real_save(fig, path)

    monkeypatch.setattr(report, "save_png", spy)
    dest = report.plot_baseline_curves(tmp_path, "DS", tmp_path / "plots" / "b.png")
    assert dest.is_file() and dest.stat().st_size > 0
    labels = [label for label, _ in drawn["lines"]]
    assert labels[0] == "gru4rec (2 seeds, 100 valid rows)" and labels[1].startswith("_")  # one legend entry per model
    assert [y for _, y in drawn["lines"][:2]] == [[0.07], [0.08]]  # evaluated epochs only
    assert "pop (all valid rows): 0.0500" in labels and "transition (all valid rows): 0.0900" in labels


def test_run_ledger_lists_each_llm_run_with_its_budget_and_time(three_seeds, tmp_path):
    from tsrec.reporting.ledger import ledger_lines, run_ledger

    for seed, (steps, wall) in {42: (1100, 1590.0), 43: (1200, 1650.0)}.items():
        d = three_seeds / DS / "tsrec" / f"seed{seed}"
        _json(d / "train_summary.json", {"train": {
            "steps": steps, "stop_reason": "plateau", "best_checkpoint": f"checkpoint-{steps - 300}",
            "best_eval_loss": 2.87, "precision": {"requested": "fp32", "resolved": "fp32"}, "wall_s": wall,
            **({"resumed_from": "checkpoint-100"} if seed == 43 else {})}})
        met = json.loads((d / "metrics.json").read_text())
        _json(d / "metrics.json", {**met, "wall_time_s": 600.0, "rows_per_s": 7.5})
    ledger = run_ledger(three_seeds, DS)
    # only the runs with a train record (tsrec 42/43); sft and seed 44 have none
    assert ledger[["variant", "seed", "steps", "best checkpoint", "resumed from", "train min",
                   "evaluate min"]].values.tolist() == [
        ["tsrec", 42, 1100, "800", "", 26.5, 10.0], ["tsrec", 43, 1200, "900", "100", 27.5, 10.0]]
    text = "\n".join(ledger_lines(ledger, DS))
    assert "**1.2 h** over 2 runs" in text  # (26.5 + 27.5 + 2 x 10) min = 74 min
    assert "ablation matrix" not in text
    # the matrix's share: tsrec x [43, 44] holds one ledger run (seed 43: 27.5 + 10 min)
    text = "\n".join(ledger_lines(ledger, DS, (["tsrec", "sft"], [43, 44])))
    assert "2 x 2 = 4 runs, what `make ablations` trains) took **0.6 h** of it, over the 1 of its runs" in text
    assert ledger_lines(run_ledger(tmp_path / "none", DS), DS) == []
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "data": {"datasets": [DS]}, "variants": {"tsrec": {}},
                                      "train": {"datasets": [DS], "variants": ["tsrec"], "seeds": [42, 43]},
                                      "report": {"results": str(three_seeds), "out": str(three_seeds / "t.md")}}))
    assert main(["--params", str(params), "report"]) == 0
    assert pd.read_csv(three_seeds / DS / "runs.csv")["steps"].tolist() == [1100, 1200]
    assert "1 x 2 = 2 runs, what `make ablations` trains) took **1.2 h** of it, over the 2 of its runs" in (three_seeds / "t.md").read_text()
    params.write_text(yaml.safe_dump({**yaml.safe_load(params.read_text()), "data": {"datasets": [DS, "Office_Products"]},
                                      "train": {"datasets": ["Office_Products"], "variants": ["tsrec"], "seeds": [42, 43]}}))
    assert main(["--params", str(params), "report", "--dataset", DS]) == 0  # DS is outside the matrix: no share stated
    assert "ablation matrix" not in (three_seeds / "t.md").read_text()
    bad = three_seeds / DS / "tsrec" / "seed43" / "train_summary.json"
    bad.write_text('{"train": {"steps": 1200,\n  "wall_s": }}')
    with pytest.raises(TsrecError, match=r"train_summary.json.*line 2|line 2.*train_summary.json"):
        run_ledger(three_seeds, DS)
    assert "the LLM runs (budget, stop, measured time)" in (three_seeds / "t.md").read_text()
