"""The report's plots of one dataset (PNG, matplotlib Agg): valid loss and valid NDCG@10 of the TS-Rec runs,
HR@K vs K of every method, the learned baselines per epoch against the Pop and transition floors, the GRPO
curves of the RL variants."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsrec.baselines.table import baseline_runs
from tsrec.core.io import atomic_file
from tsrec.data import layout
from tsrec.reporting.tables import ITEM_ONLY, Row


def save_png(fig, path: Path) -> Path:
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_curves(results: Path, ds: str, variant: str) -> pd.DataFrame:
    """step x seed table of valid loss from ``seed<N>/valid.csv`` (empty when none)."""
    base = results / ds / variant
    cols = {}
    for d in sorted(base.glob("seed*")):
        f, seed = d / "valid.csv", layout.seed_of(d)
        if seed is not None and f.is_file():
            df = pd.read_csv(f)
            if {"step", "eval_loss"} <= set(df.columns) and len(df):
                cols[seed] = df.groupby("step")["eval_loss"].last()
    return pd.DataFrame(cols).sort_index()


def plot_valid_loss(results: Path, ds: str, variants: list[str], dest: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    missing = []
    for v in variants:
        curves = read_curves(results, ds, v)
        if curves.empty:
            missing.append(v)
            continue
        mean = curves.mean(axis=1)
        line, = ax.plot(mean.index, mean.values, label=f"{v} (n={curves.shape[1]})", markersize=3,
                        **series_style(len(ax.lines)))
        if curves.shape[1] > 1:
            ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel="valid loss", title=f"{ds}: valid loss, mean over seeds (band: min-max)")
    if len(ax.lines):
        ax.legend(fontsize=8)
    if missing:
        fig.text(0.01, -0.02, "not run: " + ", ".join(missing), fontsize=8, color="gray", va="top")
    save_png(fig, dest)
    plt.close(fig)
    return dest


def plot_valid_ndcg(results: Path, ds: str, dest: Path) -> Path | None:
    """Valid NDCG@10 (train.rank_rows) against the step, one line per run (variant x seed); None without curves."""
    plt = pyplot()
    curves = []
    for v in layout.found_variants(results, ds):
        for seed, folder in layout.variant_seeds(results, ds, v).items():
            f = folder / "valid_rank.csv"
            df = pd.read_csv(f) if f.is_file() else pd.DataFrame()
            if {"step", "NDCG@10"} <= set(df.columns) and len(df):
                curves.append((v, seed, df))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = sorted({v for v, _, _ in curves})
    styles = ["-", "--", ":", "-."]
    for v, seed, df in curves:
        i = variants.index(v)
        ax.plot(df["step"], df["NDCG@10"], marker="o", ms=3, color=f"C{i % 10}", linestyle=styles[(i // 10) % 4],
                label=f"{v} seed {seed}")
    rows = int(curves[0][2]["rows"].iloc[0]) if "rows" in curves[0][2] else None
    ax.set(xlabel="optimizer step", ylabel="valid NDCG@10",
           title=f"{ds}: valid NDCG@10 during training" + (f" ({rows:,} fixed valid rows)" if rows else ""))
    ax.legend(fontsize=7)
    save_png(fig, dest)
    plt.close(fig)
    return dest


def plot_hr_at_k(rows: list[Row], ks: list[int], ds: str, dest: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    missing, item_only = [], []
    drawn = 0
    for r in rows:
        if r.kind == "not ours":
            continue
        if not r.runs:
            (item_only if r.status == ITEM_ONLY else missing).append(r.label)
            continue
        pts = [(k, *r.runs.mean_ci(f"HR@{k}")) for k in ks]
        pts = [(k, m, ci or 0.0) for k, m, ci in pts if m is not None]
        style = {**series_style(drawn), **({"linestyle": "--"} if r.kind == "baseline" else {})}
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], markersize=4, capsize=2,
                    lw=1.2, label=f"{r.label} (n={len(r.runs.seeds)})", **style)
        drawn += 1
    ax.set(xlabel="K", ylabel="HR@K (SID level)", xticks=ks,
           title=f"{ds}: HR@K, mean over seeds (bars: 95 % t-interval; dashed: baselines)")
    if ax.containers:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    notes = [f"{what}: {', '.join(labels)}" for what, labels in (("not run", missing),
                                                                   ("item-level metrics only", item_only)) if labels]
    if notes:
        fig.text(0.01, -0.02, "; ".join(notes), fontsize=7, color="gray", va="top", wrap=True)
    save_png(fig, dest)
    plt.close(fig)
    return dest


MARKERS = "osD^vP*Xph<>"
LINESTYLES = ("-", "--", "-.", ":")


def series_style(i: int) -> dict:
    """The i-th series' style: a tab20 colour and a marker, both unique up to 20 / 12 series, and a line style;
    no two of the first 240 series look alike."""
    import matplotlib

    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[(i // 20) % len(LINESTYLES)]}


FLOORS = (("pop", ":"), ("transition", "--"))  # deterministic baselines: horizontal lines


def plot_baseline_curves(results: Path, ds: str, dest: Path) -> Path | None:
    """Valid NDCG@10 (SID level) per epoch of each baseline with a learning curve, one line per seed (its chosen
    config), with the valid NDCG@10 of Pop and the transition floor as horizontal lines. None: no curve."""
    runs = {model: recs for _, model, recs in baseline_runs(results, ds)}
    learned = {m: recs for m, recs in runs.items() if any(r.get("curve") for r in recs)}
    if not learned:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for j, (m, recs) in enumerate(learned.items()):
        style = series_style(j)
        for i, rec in enumerate(recs):
            pts = [(p["epoch"], p["valid_NDCG@10"]) for p in rec.get("curve") or [] if "valid_NDCG@10" in p]
            label = f"{m} ({len(recs)} seeds, {rec.get('valid_rows_early_stopping')} valid rows)" if i == 0 else None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, alpha=0.8, label=label, markersize=2,
                    markevery=5, **style)
    for m, style in FLOORS:
        if m in runs:
            value = runs[m][0]["valid"]["NDCG@10"]
            ax.axhline(value, color="black", ls=style, lw=1, label=f"{m} (all valid rows): {value:.4f}")
    ax.set(xlabel="epoch", ylabel="valid NDCG@10 (SID level)",
           title=f"{ds}: learned baselines per epoch (chosen config, each seed) vs the floors")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, dest)
    plt.close(fig)
    return dest


RL_PANELS = [("reward_rule", "reward: rule"), ("reward_ranking", "reward: ranking"), ("kl", "KL to reference"),
             ("NDCG@10", "valid NDCG@10")]


def rl_variants(results: Path, ds: str) -> list[str]:
    """Variants with RL curves (``seed<N>/rl.csv``)."""
    base = results / ds
    return sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("seed*/rl.csv"))) if base.is_dir() else []


def plot_rl(results: Path, ds: str, variants: list[str], dest: Path, smooth: int = 16) -> Path:
    """GRPO curves per RL variant (seeds averaged): both reward parts and the KL (rolling mean over ``smooth``
    steps) from ``rl.csv``, valid NDCG@10 from ``rl_valid.csv``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(RL_PANELS), figsize=(4 * len(RL_PANELS), 3.4))
    for ax, (_, title) in zip(axes, RL_PANELS):
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel(title, fontsize=8)
    for j, v in enumerate(variants):
        seeds = sorted((results / ds / v).glob("seed*"))
        for ax, (col, title) in zip(axes, RL_PANELS):
            name = "rl_valid.csv" if col == "NDCG@10" else "rl.csv"
            frames = [pd.read_csv(d / name).groupby("step")[col].last() for d in seeds if (d / name).is_file()]
            if not frames:
                continue
            curve = pd.concat(frames, axis=1).mean(axis=1)
            if name == "rl.csv":
                curve = curve.rolling(smooth, min_periods=1).mean()
            style = series_style(j)
            if name == "rl.csv":
                style["marker"] = None
            ax.plot(curve.index, curve.values, ms=3, label=f"{v} (n={len(frames)})", **style)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{ds}: GRPO (rewards and KL: rolling mean over {smooth} steps)", fontsize=9)
    save_png(fig, dest)
    plt.close(fig)
    return dest
