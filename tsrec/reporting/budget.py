"""The equal-budget protocol's pilot rule (docs/protocol.md), applied to valid-ranking curves: per variant, each
evaluated step's valid NDCG@10 against the variant's best point, paired over the same fixed valid rows
(``tsrec.eval.stats.paired``); the budget B = the smallest step at which every variant is within its paired 95 %
CI of its own best; the selection rule = ``final`` when every variant's last point is, else ``valid_ndcg10``.
Across arms (rule 3, ``compare_arms``): each arm's score = the mean over variants of the valid NDCG@10 its rule
selects by B, paired per row against the best arm; the profile = the best arm that fits the time limit, a tie
(the paired CI of the gap covers 0) going to the cheaper arm.

Input: a run's ``plots/valid_rank_rows.csv`` (step, row, rank), written by ``train.rank_rows``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsrec.core.errors import TsrecError
from tsrec.eval.stats import ndcg_at, paired, paired_pooled

COLUMNS = ("step", "row", "rank")


def read_points(path: Path) -> dict[int, pd.DataFrame]:
    """step -> the per-row ranks (row, rank) of that evaluation; every step must cover the same rows."""
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "plots" / "valid_rank_rows.csv", path / "valid_rank_rows.csv")
                     if p.is_file()), path / "valid_rank_rows.csv")
    if not path.is_file():
        raise TsrecError("no valid ranking curve (train with train.rank_rows > 0)", file=path)
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TsrecError(f"missing column(s) {missing}; expected {list(COLUMNS)}", file=path)
    if df.empty:
        raise TsrecError("no evaluation recorded yet (header only)", file=path)
    points = {int(s): g[["row", "rank"]].sort_values("row").reset_index(drop=True) for s, g in df.groupby("step")}
    rows = next(iter(points.values()))["row"]
    for step, g in points.items():
        if not g["row"].equals(rows):
            raise TsrecError(f"step {step} ranks other rows than step {min(points)}: not one fixed subsample",
                             file=path)
    return points


def curve(points: dict[int, pd.DataFrame], *, k: int = 10, n_boot: int = 2000, seed: int = 42) -> dict:
    """Each point's NDCG@k and its paired difference to the best point (95 % bootstrap CI over rows)."""
    means = {s: float(ndcg_at(p["rank"].to_numpy(), k).mean()) for s, p in points.items()}
    best = max(sorted(means), key=lambda s: means[s])  # ties: the earliest
    out = []
    for s in sorted(points):
        cmp = paired(points[s], points[best], k=k, n_boot=n_boot, seed=seed)
        lo, hi = cmp[f"NDCG@{k}_diff_ci95"]
        out.append({"step": s, f"NDCG@{k}": means[s], "diff_vs_best": cmp[f"NDCG@{k}_diff"],
                    "ci95": [lo, hi], "within_best": s == best or hi >= 0})
    return {"best_step": best, f"best_NDCG@{k}": means[best], "rows": len(points[best]), "points": out}


def choose(curves: dict[str, dict], *, capped: bool = False) -> dict:
    """The rule: B = the smallest step every variant evaluated at and is within its best's CI there; the
    selection = ``final`` when every variant's last point is within its best's CI, else ``valid_ndcg10``.
    ``capped``: the curves are as long as the cost limit lets a run train, so where no step qualifies B is the
    last common step (``budget_capped``) instead of none."""
    steps = sorted(set.intersection(*({p["step"] for p in c["points"]} for c in curves.values())))
    if not steps:
        raise TsrecError(f"the curves of {sorted(curves)} share no evaluated step")
    within = {v: {p["step"]: p["within_best"] for p in c["points"]} for v, c in curves.items()}
    budget = next((s for s in steps if all(w[s] for w in within.values())), None)
    at_cap = budget is None and capped
    budget = steps[-1] if at_cap else budget
    last = {v: c["points"][-1]["within_best"] for v, c in curves.items()}
    return {"budget": budget, "budget_capped": at_cap, "common_steps": steps,
            "select": "final" if all(last.values()) else "valid_ndcg10", "last_within_best": last,
            "note": None if budget is not None else "no common step is within every variant's best: train longer"}


def budget_report(runs: dict[str, Path], *, k: int = 10, n_boot: int = 2000, seed: int = 42) -> dict:
    """The rule applied to the runs ``variant -> run folder (or its valid_rank_rows.csv)``."""
    if len(runs) < 1:
        raise TsrecError("no runs given")
    return {"k": k, "bootstrap": {"resamples": n_boot, "seed": seed}, "runs": {v: str(p) for v, p in runs.items()},
            **_apply(_read_all(runs), k=k, n_boot=n_boot, seed=seed)}


def _read_all(runs: dict[str, Path]) -> dict[str, dict[int, pd.DataFrame]]:
    return {v: read_points(p) for v, p in runs.items()}


def _apply(points: dict[str, dict[int, pd.DataFrame]], *, k: int, n_boot: int, seed: int,
           capped: bool = False) -> dict:
    """Rules 1-2 on the variants' points: their curves, B and the selection."""
    curves = {v: curve(pts, k=k, n_boot=n_boot, seed=seed) for v, pts in points.items()}
    return {"curves": curves, **choose(curves, capped=capped)}


def selected_step(curve_: dict, budget: int, select: str, k: int = 10) -> int:
    """The point a run of the arm keeps: the one at B (``final``), else the best evaluated point by B."""
    if select == "final":
        return budget
    steps = [p for p in curve_["points"] if p["step"] <= budget]
    return max(steps, key=lambda p: (p[f"NDCG@{k}"], -p["step"]))["step"]


def compare_arms(arms: dict[str, dict[str, Path]], costs: dict[str, float], *, limit_h: float = 2.5, k: int = 10,
                 n_boot: int = 2000, seed: int = 42, capped: frozenset[str] = frozenset()) -> dict:
    """Rule 3 over arms ``name -> {variant: run folder}`` (the same variants, the same valid rows) with
    ``costs`` = hours of one run (train + full-test evaluate, 2 threads) per arm. An arm in ``capped`` was
    measured exactly as long as the cost limit lets it train: where no common step has every variant within
    its best (rule 1 asks for more steps than the limit allows), its B is its last common step, marked
    ``budget_capped``, instead of an error."""
    if set(costs) != set(arms):
        raise TsrecError(f"give one cost per arm: arms {sorted(arms)}, costs {sorted(costs)}")
    if not set(capped) <= set(arms):
        raise TsrecError(f"--capped names no arm: {sorted(set(capped) - set(arms))}")
    variants = sorted(next(iter(arms.values())))
    if any(sorted(v) != variants for v in arms.values()):
        raise TsrecError(f"every arm needs the same variants ({variants})")
    per_arm, chosen_points = {}, {}
    for name, runs in arms.items():
        points = _read_all(runs)
        rep = _apply(points, k=k, n_boot=n_boot, seed=seed, capped=name in capped)
        if rep["budget"] is None:
            raise TsrecError(f"arm {name}: {rep['note']}")
        steps = {v: selected_step(c, rep["budget"], rep["select"], k) for v, c in rep["curves"].items()}
        chosen_points[name] = {v: points[v][s] for v, s in steps.items()}
        per_arm[name] = {"budget": rep["budget"], "budget_capped": rep["budget_capped"], "select": rep["select"],
                         "selected_step": steps,
                         f"NDCG@{k}": {v: float(ndcg_at(chosen_points[name][v]["rank"].to_numpy(), k).mean())
                                       for v in variants},
                         "cost_h": costs[name], "fits": costs[name] <= limit_h}
        per_arm[name][f"mean_NDCG@{k}"] = sum(per_arm[name][f"NDCG@{k}"].values()) / len(variants)
    fitting = [a for a in arms if per_arm[a]["fits"]]
    if not fitting:
        raise TsrecError(f"no arm fits {limit_h} h")
    best = max(fitting, key=lambda a: per_arm[a][f"mean_NDCG@{k}"])
    for name in arms:  # the gap to the best fitting arm, paired per row over the variants
        cmp = paired_pooled([(chosen_points[name][v], chosen_points[best][v]) for v in variants], k=k,
                            n_boot=n_boot, seed=seed)
        lo, hi = cmp[f"NDCG@{k}_diff_ci95"]
        per_arm[name] |= {"diff_vs_best": cmp[f"NDCG@{k}_diff"], "ci95": [lo, hi], "tie": lo <= 0 <= hi}
    tied = [a for a in fitting if per_arm[a]["tie"] or a == best]
    choice = min(tied, key=lambda a: (per_arm[a]["cost_h"], a))
    return {"k": k, "limit_h": limit_h, "variants": variants, "bootstrap": {"resamples": n_boot, "seed": seed},
            "runs": {a: {v: str(p) for v, p in r.items()} for a, r in arms.items()}, "arms": per_arm,
            "best": best, "chosen": choice}


def arms_markdown(report: dict) -> str:
    from tabulate import tabulate

    k = report["k"]
    rows = [[a, f"{r['budget']} (cap)" if r.get("budget_capped") else r["budget"], r["select"],
             *(f"{r[f'NDCG@{k}'][v]:.4f} ({r['selected_step'][v]})" for v in report["variants"]),
             f"{r[f'mean_NDCG@{k}']:.4f}", f"{r['diff_vs_best']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]",
             f"{r['cost_h']:.2f}", "yes" if r["fits"] else "no", "**chosen**" if a == report["chosen"] else ""]
            for a, r in report["arms"].items()]
    head = ["arm", "B", "selection", *(f"{v} NDCG@{k} (step)" for v in report["variants"]), "mean",
            "- best arm [95 % CI]", "cost h", f"fits {report['limit_h']} h", ""]
    capped = [a for a, r in report["arms"].items() if r.get("budget_capped")]
    note = (f"\n\n(cap): {', '.join(capped)}: no common step had every variant within its best; B is the last step "
            "the cost limit allows (rule 1 would need more)" if capped else "")
    return (tabulate(rows, headers=head, tablefmt="github") + note + f"\n\nBest fitting arm: {report['best']}; "
            f"chosen (ties to the cheaper): **{report['chosen']}**\n")


def markdown(report: dict) -> str:
    """One table per variant (step, NDCG@k, difference to the best point with its CI) and the choice."""
    from tabulate import tabulate

    k = report["k"]
    parts = []
    for v, c in report["curves"].items():
        rows = [[p["step"], f"{p[f'NDCG@{k}']:.4f}", f"{p['diff_vs_best']:+.4f}",
                 f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]", "yes" if p["within_best"] else "no"]
                for p in c["points"]]
        parts.append(f"**{v}** (best step {c['best_step']}, {c['rows']} valid rows)\n\n"
                     + tabulate(rows, headers=["step", f"NDCG@{k}", "- best", "95 % CI", "within best"],
                                tablefmt="github"))
    parts.append(f"Budget B = {report['budget']}; selection rule: {report['select']}"
                 + (f" ({report['note']})" if report.get("note") else ""))
    return "\n\n".join(parts) + "\n"


def plot(report: dict, dest: Path) -> Path:
    """Valid NDCG@k vs step, a line per variant with each point's 95 % CI of the gap to its best (shaded), the
    chosen budget as a vertical line."""
    from tsrec.reporting.plots import pyplot, save_png

    plt, k = pyplot(), report["k"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for v, c in report["curves"].items():
        steps = [p["step"] for p in c["points"]]
        y = [p[f"NDCG@{k}"] for p in c["points"]]
        best = c[f"best_NDCG@{k}"]
        line, = ax.plot(steps, y, marker="o", label=f"{v} (best {best:.4f} @ {c['best_step']})")
        ax.fill_between(steps, [best + p["ci95"][0] for p in c["points"]], [best + p["ci95"][1] for p in c["points"]],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    if report["budget"] is not None:
        ax.axvline(report["budget"], color="grey", linestyle="--", linewidth=1, label=f"B = {report['budget']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"valid NDCG@{k}")
    ax.set_title(f"valid NDCG@{k} ({next(iter(report['curves'].values()))['rows']} fixed rows); shade: best + 95 % CI "
                 "of the paired gap", fontsize=8)
    ax.legend(fontsize=8)
    path = save_png(fig, Path(dest))
    plt.close(fig)
    return path
