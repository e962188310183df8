"""Does an early valid loss foretell the end of a run? The evidence behind `sweep.pruner`.

From the committed full runs (results/<DS>/<variant>/seed<N>/: valid.csv, the trainer's valid loss every
`train.eval_steps`, and metrics.json, full-test NDCG@10):
- Spearman rank correlation of the valid loss at step s (and of the best valid loss) with test NDCG@10;
- a replay of optuna's MedianPruner (`sweep.pruner` startup / warmup, the loss negated as `tsrec sweep` reports
  it) over the runs in 200 seeded random orders, each run a trial whose final value is its test NDCG@10: how
  often each run is pruned, and how often the best run is;
- the same replay of the pruner params.yaml configures (`tsrec.tuning.study.make_pruner`): which healthy runs it stops.

    python benchmarks/sweep_pruning_signal.py  ->  results/sweep_design/pruning_signal.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from scipy.stats import spearmanr

from tsrec.eval.records import read_json_object
from tsrec.core.config import load_params, section
from tsrec.core.io import atomic_file, write_json
from tsrec.tuning.config import SweepConfig
from tsrec.tuning.study import make_pruner

ROOT = Path(__file__).resolve().parents[1]
STEPS = (300, 500, 800, 1000)
VARIANTS = ("tsrec", "no_sainit", "no_tsalign", "sft", "sainit_a", "sainit_ab", "teacher_ctfidf")


def load_runs(ds: str) -> pd.DataFrame:
    rows = []
    for variant in VARIANTS:
        for run in sorted((ROOT / "results" / ds / variant).glob("seed*")):
            if not (run / "valid.csv").is_file() or not (run / "metrics.json").is_file():
                continue
            curve = pd.read_csv(run / "valid.csv").set_index("step")["eval_loss"]
            ndcg = read_json_object(run / "metrics.json")["NDCG@10"]
            rows.append({"run": f"{variant}-{run.name.removeprefix('seed')}", "ndcg10": ndcg,
                         "best_loss": float(curve.min()), "steps": int(curve.index.max()),
                         **{f"loss@{s}": float(curve[s]) if s in curve.index else np.nan for s in STEPS},
                         "curve": curve})
    return pd.DataFrame(rows)


def replay_pruner(runs: pd.DataFrame, make_pruner, orders: int, seed: int) -> dict[str, float]:
    """Share of the seeded random orders in which ``make_pruner()`` stops each run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruned = {r: 0 for r in runs["run"]}
    rng = np.random.default_rng(seed)
    for _ in range(orders):
        study = optuna.create_study(direction="maximize", pruner=make_pruner())
        for i in rng.permutation(len(runs)):
            run = runs.iloc[i]
            trial = study.ask()
            for step, loss in run["curve"].items():
                trial.report(-float(loss), int(step))
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    pruned[run["run"]] += 1
                    break
            else:
                study.tell(trial, float(run["ndcg10"]))
    return {r: n / orders for r, n in pruned.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="Industrial_and_Scientific")
    ap.add_argument("--orders", type=int, default=200)
    args = ap.parse_args()
    cfg = section(load_params(ROOT / "params.yaml"), "sweep", SweepConfig)
    pruner_cfg = {"startup_trials": cfg.pruner.startup_trials, "warmup_steps": cfg.pruner.warmup_steps}
    median = dataclasses.replace(cfg, pruner=dataclasses.replace(cfg.pruner, kind="median"))
    runs = load_runs(args.dataset)
    corr = {}
    for col in [f"loss@{s}" for s in STEPS] + ["best_loss", "steps"]:
        sub = runs[runs[col].notna()]
        r = spearmanr(sub[col], sub["ndcg10"])
        corr[col] = {"n": len(sub), "spearman": round(float(r.statistic), 3), "p": round(float(r.pvalue), 3)}
    share = replay_pruner(runs, lambda: make_pruner(median), args.orders, seed=42)
    configured = replay_pruner(runs, lambda: make_pruner(cfg), 1 if cfg.pruner.kind == "threshold" else args.orders,
                               seed=42)
    max_after_warmup = {r: round(float(c[c.index >= cfg.pruner.warmup_steps].max()), 4)
                        for r, c in zip(runs["run"], runs["curve"])}
    best = runs.loc[runs["ndcg10"].idxmax(), "run"]
    trials = {}  # the sweep's own trials (valid NDCG@10, not test): does the configured pruner stop them?
    for f in sorted((ROOT / "results" / args.dataset / "sweep" / "curves").glob("trial*.csv")):
        curve = pd.read_csv(f).set_index("step")["eval_loss"]
        one = pd.DataFrame([{"run": f.stem, "ndcg10": 0.0, "curve": curve}])
        trials[f.stem] = {"loss@500": round(float(curve.get(500, np.nan)), 4),
                          "max_loss_after_warmup": round(float(curve[curve.index >= cfg.pruner.warmup_steps].max()), 4),
                          "configured_pruner_stops": replay_pruner(one, lambda: make_pruner(cfg), 1, 42)[f.stem] > 0}
    out = {"dataset": args.dataset, "runs": runs.drop(columns="curve").round(4).to_dict(orient="records"),
           "spearman_vs_test_ndcg10": corr, "pruner": {"kind": "median", **pruner_cfg}, "orders": args.orders,
           "pruned_share": share, "best_run": best,
           "configured_pruner": dataclasses.asdict(cfg.pruner), "configured_pruned_share": configured,
           "max_loss_after_warmup": max_after_warmup, "sweep_trials": trials,
           "command": f"python benchmarks/sweep_pruning_signal.py --dataset {args.dataset} --orders {args.orders}"}
    dest = ROOT / "results/sweep_design"
    write_json(dest / "pruning_signal.json", out)
    table = runs.drop(columns="curve").assign(
        max_loss_after_warmup=runs["run"].map(max_after_warmup), median_pruned_share=runs["run"].map(share),
        configured_pruned_share=runs["run"].map(configured)).sort_values("ndcg10", ascending=False)
    lines = [f"# Early valid loss vs the end of a run ({args.dataset})", "",
             f"Command: `{out['command']}`. Source: the committed full runs (valid.csv: the trainer's valid loss; "
             "metrics.json: full-test NDCG@10). `median_pruned_share`: share of "
             f"{args.orders} seeded random orders in which optuna's MedianPruner ({pruner_cfg}, loss reported "
             "negated as `tsrec sweep` does) stops the run, each run replayed as a trial whose value is its test "
             "NDCG@10. `configured_pruned_share`: the same for the pruner params.yaml configures "
             f"(`sweep.pruner` = {dataclasses.asdict(cfg.pruner)}).", "",
             "Spearman rank correlation with test NDCG@10 (a negative one is what a loss-based pruner assumes):", "",
             "| signal | n | Spearman | p |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['n']} | {v['spearman']:+.3f} | {v['p']:.3f} |" for k, v in corr.items()]
    lines += ["", f"Best run by test NDCG@10: {best}, pruned by the MedianPruner in {share[best]:.0%} of the "
              f"orders. Runs the configured pruner stops: {sum(v > 0 for v in configured.values())} of {len(runs)}.",
              "",
              table.to_markdown(index=False, floatfmt=".4f")]
    if trials:
        lines += ["", "The sweep's trials (`results/<DS>/sweep/curves/`), alone against the configured pruner "
                  "(a MedianPruner replay needs completed values):", "",
                  pd.DataFrame(trials).T.rename_axis("trial").reset_index().to_markdown(index=False, floatfmt=".4f")]
    with atomic_file(dest / "pruning_signal.md") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
