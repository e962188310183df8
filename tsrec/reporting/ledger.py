"""The ledger of the LLM runs (one row per evaluated variant x seed: budget, stop, precision, kernels, measured
time) and the budget guard on the ablation matrix's training lengths."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsrec.core.pinning import describe
from tsrec.data import layout
from tsrec.eval.records import legacy_machines, machine, read_json_object


def run_ledger(results: Path, ds: str) -> pd.DataFrame:
    """One row per evaluated LLM run (variant x seed; not the RL runs): its budget, stop and measured time, from
    its train_summary.json and metrics.json. Empty without runs."""
    rows, legacy = [], legacy_machines(results)
    for variant in layout.found_variants(results, ds):
        for seed, folder in layout.variant_seeds(results, ds, variant).items():
            summary_file = folder / "train_summary.json"
            if not summary_file.is_file():  # e.g. the RL runs: their own record
                continue
            tr = read_json_object(summary_file).get("train") or {}
            met = read_json_object(folder / "metrics.json")
            prec = tr.get("precision") or {}
            rows.append({
                "variant": variant, "seed": seed, "steps": tr.get("steps"), "stop": tr.get("stop_reason"),
                "best checkpoint": str(tr.get("best_checkpoint") or "").removeprefix("checkpoint-"),
                "resumed from": str(tr.get("resumed_from") or "").removeprefix("checkpoint-"),
                "best valid loss": tr.get("best_eval_loss"),
                "precision": prec.get("resolved") if isinstance(prec, dict) else prec,
                # CPU kernel set x threads (tsrec.core.pinning): the train record's, else the legacy reconstruction
                "kernels": describe(tr.get("machine") or machine(results, f"{ds}/{variant}/{folder.name}/metrics.json", legacy)),
                "train min": round(tr["wall_s"] / 60, 1) if tr.get("wall_s") is not None else None,
                "evaluate min": round(met["wall_time_s"] / 60, 1) if met.get("wall_time_s") is not None else None,
                "test rows/s": met.get("rows_per_s"),
                "tokens": tr.get("tokens_total"), "NDCG@10": met.get("NDCG@10"),
            })
    return pd.DataFrame(rows)


def budget_guard(ledger: pd.DataFrame, variants: list[str], seeds: list[int]) -> str:
    """One line on the matrix runs' training length: equal budgets, or the spread of steps and the Spearman
    correlation of steps with test NDCG@10 (a variant comparison is confounded when runs stop at different,
    noise-driven points, and this correlation is high)."""
    from scipy.stats import spearmanr

    mine = ledger[ledger["variant"].isin(variants) & ledger["seed"].isin(seeds)].dropna(subset=["steps"])
    if mine.empty:
        return ""
    steps, tokens = mine["steps"].astype(int), mine["tokens"].dropna()
    span = f"{steps.min():,}" if steps.nunique() == 1 else f"{steps.min():,}-{steps.max():,}"
    tok = f", {tokens.min():,.0f}-{tokens.max():,.0f} tokens" if len(tokens) else ""
    if steps.nunique() == 1:
        return (f"**Budget guard**: all {len(mine)} matrix runs trained {span} optimizer steps{tok} (equal "
                "budgets: no run's length explains its score).")
    ok = mine.dropna(subset=["NDCG@10"])
    rho, p = spearmanr(ok["steps"], ok["NDCG@10"]) if len(ok) > 2 else (float("nan"), float("nan"))
    return (f"**Budget guard**: the {len(mine)} matrix runs trained {span} optimizer steps{tok}; Spearman "
            f"correlation of steps with test NDCG@10 = {rho:.2f} (p = {p:.1g}, n = {len(ok)}). Unequal budgets: "
            "a difference between variants here can be a difference in training length.")


def ledger_hours(ledger: pd.DataFrame) -> float:
    return float(ledger[["train min", "evaluate min"]].sum().sum() / 60)


def ledger_lines(ledger: pd.DataFrame, ds: str, matrix: tuple[list[str], list[int]] | None = None) -> list[str]:
    if ledger.empty:
        return []
    total = ledger_hours(ledger)
    share, guard = "", ""
    if matrix:
        variants, seeds = matrix
        mine = ledger[ledger["variant"].isin(variants) & ledger["seed"].isin(seeds)]
        share = (f" The ablation matrix (`train.variants` x `train.seeds`: {len(variants)} x {len(seeds)} = "
                 f"{len(variants) * len(seeds)} runs, what `make ablations` trains) took **{ledger_hours(mine):.1f} h**"
                 f" of it, over the {len(mine)} of its runs listed here.")
        guard = budget_guard(ledger, variants, seeds)
    return [f"### {ds}: the LLM runs (budget, stop, measured time)", "",
            "From each run's `train_summary.json` and `metrics.json`. Times are wall clock as each run ran (1 or 2 "
            "threads, often beside another job; evaluate's `run.json` records its threads), so their sum is what "
            f"these runs cost on the machines they ran on, not a benchmark: **{total:.1f} h** over {len(ledger)} "
            f"runs (train + full-test evaluate). A run `resumed from` a checkpoint counts only its last sitting's train "
            f"minutes (the sittings before it were stopped with their session).{share} CSV: `{ds}/runs.csv`.", "",
            ledger.to_markdown(index=False, floatfmt=".4g"), "", *([guard, ""] if guard else [])]
