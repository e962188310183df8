"""report: the main table per dataset (Markdown + CSV) and its plots, from the files under results/.

Per dataset ``<DS>``:
  results/tables.md              every dataset's table (``report.out``), with the published rows for context
  results/<DS>/table.csv         the same rows as numbers (mean, 95 % half-width, tests)
  results/<DS>/runs.csv          one row per LLM run: steps, stop, best checkpoint, precision, measured minutes
  results/<DS>/plots/valid_loss.png   valid loss of the TS-Rec variants (mean over seeds, min-max band)
  results/<DS>/plots/hr_at_k.png      HR@K vs K of every method that ran (mean over seeds, 95 % CI bars)
  results/<DS>/plots/baselines_valid.png  valid NDCG@10 per epoch of every learned baseline (each seed) against
                                      the Pop and transition floors: why a model ends below a floor
  results/<DS>/plots/rl.png           GRPO curves (reward parts, KL, valid NDCG@10) of the RL variants, where run

Rows: the baselines (mean over ``baselines.seeds``), then TS-Rec and its ablations (mean over ``train.seeds``).
Cells are mean ± the half-width of the 95 % Student-t interval over seeds; one run shows its value and n=1.
A method without files is "not run", never filled in. The extra columns compare ``tsrec`` with each row:
relative gain on NDCG@10, a paired test on per-row ranks pooled over seeds, and a seed-level test
(tsrec.eval.stats). Also writes results/baselines.md (tsrec.baselines.table).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from tsrec.data import layout

from tsrec.eval import stats
from tsrec.baselines.table import PUBLISHED_COLUMNS, PUBLISHED_LABEL, ROWS, baseline_runs, published_rows, write_table
from tsrec.commands.check import legacy_machines, machine, read_json_object
from tsrec.core.config import global_seed, section
from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_file, commit_group
from tsrec.eval.metrics import KS
from tsrec.core.pinning import describe

log = logging.getLogger(__name__)

OURS = "tsrec"
MAIN = "NDCG@10"                 # the metric of the gain column and of the tests
PAIRED_K = 10
N_BOOT = 2000
VARIANTS = {  # variant -> row label, in table order; other variants found follow
    "sft": "LC-Rec / MiniOneRec-SFT (= our `sft` variant)",
    "sft_rl": "MiniOneRec-GRPO (= our `sft_rl`: sft + GRPO)",
    "no_sainit": "TS-Rec w/o SA-Init (`no_sainit`)",
    "no_tsalign": "TS-Rec w/o TS-Align (`no_tsalign`)",
    "tsrec": "TS-Rec (`tsrec`)",
    "tsrec_rl": "TS-Rec + GRPO (`tsrec_rl`)",
}
CURVE_VARIANTS = ("tsrec", "no_sainit", "no_tsalign", "sft")
ITEM_ONLY = "item level only (results/baselines.md)"  # a baseline whose files hold no SID-level metrics


@dataclasses.dataclass
class ReportConfig:
    results: str = "results"
    out: str = "results/tables.md"
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 3, 5, 10, 20])

    def validate(self) -> None:
        if not self.ks or any(k not in KS for k in self.ks):
            raise ValueError(f"ks must be a non-empty subset of {list(KS)}")


@dataclasses.dataclass
class Row:
    label: str
    kind: str                     # baseline | variant | not ours (never run here)
    runs: layout.Runs | None
    status: str = "not run"


def method_rows(results: Path, ds: str, variants: list[str]) -> list[Row]:
    """Baselines (table.ROWS order), the methods we do not run, then the variants (VARIANTS order, then any
    other declared or found)."""
    rows = []
    for label, src in ROWS:
        kind, _, name = (src or "").partition(":")
        if kind == "baseline":
            runs = layout.load_baseline(results, ds, name)
            if runs is not None and not any(runs.metrics.values()):  # ran, but this table is SID level
                rows.append(Row(label, "baseline", None, ITEM_ONLY))
            else:
                rows.append(Row(label, "baseline", runs, "ok" if runs else "not run"))
        elif kind == "llm":  # tsrec.commands.llm_baseline: the evaluate stage's files under results/<DS>/<model>/
            runs = layout.load_variant(results, ds, name)
            rows.append(Row(label, "baseline", runs, "ok" if runs else "not run"))
        elif not src:
            rows.append(Row(label, "not ours", None, "not run (not implemented here)"))
    names = list(dict.fromkeys([*VARIANTS, *variants, *layout.found_variants(results, ds)]))
    for v in names:
        runs = layout.load_variant(results, ds, v)
        status = "ok" if runs else ("not run (old layout: run `tsrec migrate-seed-layout`)"
                                    if layout.old_layout(results, ds, v) else "not run")
        if status.startswith("not run (old"):
            log.warning("%s/%s: files without a seed folder; run `tsrec migrate-seed-layout`", ds, v)
        rows.append(Row(VARIANTS.get(v, f"TS-Rec variant `{v}`"), "variant", runs, status))
    return rows


def best_baseline(rows: list[Row]) -> Row | None:
    ran = [r for r in rows if r.kind == "baseline" and r.runs and r.runs.mean_ci(MAIN)[0] is not None]
    return max(ran, key=lambda r: r.runs.mean_ci(MAIN)[0]) if ran else None


def compare(ours: layout.Runs, other: layout.Runs, seed: int = 42) -> dict:
    """tsrec vs ``other``: gain on MAIN, the paired row test (pooled over seed pairs) and the seed-level test."""
    a, b = ours.mean_ci(MAIN)[0], other.mean_ci(MAIN)[0]
    out: dict = {"gain": a / b - 1 if a is not None and b else None}
    pairs = stats.seed_pairs(list(ours.ranks), list(other.ranks), deterministic_b=other.deterministic)
    if not pairs:
        out["paired_note"] = "no row ranks" if not (ours.ranks and other.ranks) else "no seeds to pair"
    else:
        try:
            frames = [(pd.read_parquet(ours.ranks[sa]), pd.read_parquet(other.ranks[sb])) for sa, sb in pairs]
            out["paired"] = stats.paired_pooled(frames, k=PAIRED_K, n_boot=N_BOOT, seed=seed)
        except TsrecError as exc:
            out["paired_note"] = str(exc)
    out["seed"] = stats.seed_test(ours.values(MAIN), other.values(MAIN), deterministic_b=other.deterministic)
    return out


def _cell(mean, ci) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f}" + ("" if ci is None else f" ± {ci:.4f}")


def _runs_cell(row: Row) -> str:
    if not row.runs:
        return ""
    seeds = row.runs.seeds
    what = "deterministic" if row.runs.deterministic else ", ".join(str(s) for s in seeds)
    return f"n={len(seeds)} ({what})"


def _source_cell(runs: layout.Runs | None, results: Path) -> str:
    """The files a row reads, relative to the results root; several seeds as ``seed{42,43,44}``."""
    if not runs:
        return ""
    paths = [p.relative_to(results).as_posix() if p.is_relative_to(results) else str(p) for p in runs.sources]
    first = layout.seed_dir(runs.seeds[0])
    if len(paths) > 1 and all(p == paths[0].replace(first, layout.seed_dir(s), 1)
                              for p, s in zip(paths, runs.seeds)):
        return paths[0].replace(first, "seed{" + ",".join(map(str, runs.seeds)) + "}", 1)
    return "; ".join(paths)


def _paired_cell(c: dict) -> str:
    if "paired" not in c:
        return f"n/a ({c.get('paired_note', 'no row ranks')})"
    p = c["paired"]
    lo, hi = p[f"NDCG@{PAIRED_K}_diff_ci95"]
    return (f"Δ {p[f'NDCG@{PAIRED_K}_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]; "
            f"sign p={p[f'HR@{PAIRED_K}_sign_test_p']:.2g} ({p['pairs']} run pair{'s' * (p['pairs'] != 1)}, "
            f"{p['rows']} rows)")


def _seed_cell(c: dict) -> str:
    t = c["seed"]
    if t["test"] == "n/a":
        return f"n/a (n={t['n']})"
    return f"{t['test']} p={t['p']:.2g} (n={t['n']})" if t["p"] is not None else f"{t['test']}: no spread (n={t['n']})"


@dataclasses.dataclass
class Table:
    shown: pd.DataFrame           # Markdown cells
    numeric: pd.DataFrame         # the CSV (published rows included)
    comparisons: dict[str, dict]  # row label -> tsrec vs that row (``compare``)
    rows: list[Row]


def dataset_table(results: Path, ds: str, ks: list[int], variants: list[str] | None = None,
                  seed: int = 42) -> Table:
    metrics = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    rows = method_rows(results, ds, variants or [])
    ours = next((r.runs for r in rows if r.kind == "variant" and r.runs and r.runs.name == OURS), None)
    best = best_baseline(rows)
    shown, numeric, comparisons = [], [], {}
    for r in rows:
        label = r.label + (" (best baseline)" if r is best else "")
        c = compare(ours, r.runs, seed) if ours and r.runs and r.runs is not ours else None
        if c:
            comparisons[label] = c
        cis = {m: r.runs.mean_ci(m) if r.runs else (None, None) for m in metrics}
        shown.append({"method": label, "runs": _runs_cell(r) or r.status,
                      **{m: _cell(*cis[m]) or ("not run" if r.status.startswith("not run") else "—")
                         for m in metrics},
                      f"tsrec gain {MAIN}": "" if not c or c["gain"] is None else f"{100 * c['gain']:+.1f} %",
                      "paired test (rows)": _paired_cell(c) if c else "",
                      "seed test": _seed_cell(c) if c else "",
                      "source": _source_cell(r.runs, results) or r.status})
        p = (c or {}).get("paired") or {}
        t = (c or {}).get("seed") or {}
        numeric.append({"method": label, "kind": r.kind, "name": r.runs.name if r.runs else None,
                        "status": r.status, "n_runs": len(r.runs.seeds) if r.runs else 0,
                        "seeds": " ".join(map(str, r.runs.seeds)) if r.runs else "",
                        **{k: v for m in metrics for k, v in ((m, cis[m][0]), (f"{m} ci95", cis[m][1]))},
                        f"tsrec gain {MAIN}": (c or {}).get("gain"),
                        f"paired {MAIN} diff": p.get(f"NDCG@{PAIRED_K}_diff"),
                        f"paired {MAIN} diff lo": (p.get(f"NDCG@{PAIRED_K}_diff_ci95") or [None])[0],
                        f"paired {MAIN} diff hi": (p.get(f"NDCG@{PAIRED_K}_diff_ci95") or [None, None])[1],
                        f"paired HR@{PAIRED_K} sign p": p.get(f"HR@{PAIRED_K}_sign_test_p"),
                        "paired run pairs": p.get("pairs"), "seed test": t.get("test"), "seed test n": t.get("n"),
                        "seed test p": t.get("p"), "source": _source_cell(r.runs, results)})
    pub = published_rows(ds)
    for rec in pub.to_dict("records"):
        numeric.append({"method": f"{rec['model']} ({PUBLISHED_LABEL})", "kind": "published", "status": "published",
                        **{m: rec.get(m) for m in metrics}, "source": "MiniOneRec paper (arXiv 2510.24431), Table 1"})
    return Table(pd.DataFrame(shown), pd.DataFrame(numeric), comparisons, rows)


# ---------------------------------------------------------------- views
DELTA = f"tsrec − row, {MAIN} [95 % CI]"   # named by its sign: positive = tsrec above the row
PROFILE_PREFIXES = ("authors_", "paper_")    # variants of the authors / paper profiles: a table of their own
# the paper's claim, TS-Rec over the best baseline on NDCG@10 (TS-Rec paper, arXiv 2602.22632), shown beside ours
PAPER_GAIN = {"Industrial_and_Scientific": 7.17, "Office_Products": 4.27}


def is_profile_row(row: Row) -> bool:
    return bool(row.runs and row.runs.name.startswith(PROFILE_PREFIXES))


def _delta_cells(c: dict | None) -> dict[str, str]:
    """The narrow view of tsrec vs a row: Δ with its CI, the sign test, the seed test, what was paired."""
    if not c:
        return {DELTA: "", f"HR@{PAIRED_K} sign p": "", "seed test p": "", "paired on": ""}
    p, t = c.get("paired"), c["seed"]
    if p:
        lo, hi = p[f"NDCG@{PAIRED_K}_diff_ci95"]
        delta = f"{p[f'NDCG@{PAIRED_K}_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        sign = f"{p[f'HR@{PAIRED_K}_sign_test_p']:.2g}"
        on = f"{p['pairs']} run pair{'s' * (p['pairs'] != 1)}, {p['rows']} rows"
    else:
        delta, sign, on = "n/a", "", c.get("paired_note", "no row ranks")
    seed = (f"n/a (n={t['n']})" if t["test"] == "n/a" else
            f"{t['p']:.2g} (n={t['n']})" if t["p"] is not None else f"no spread (n={t['n']})")
    return {DELTA: delta, f"HR@{PAIRED_K} sign p": sign, "seed test p": seed, "paired on": on}


def headline_md(table: Table, rows: list[Row]) -> str:
    """Narrow: the verdict's metrics first (NDCG@10, HR@10), then tsrec − row with its tests."""
    want = {id(r) for r in rows}
    recs = []
    for r, shown in zip(table.rows, table.shown.to_dict("records")):
        if id(r) in want:
            recs.append({"method": shown["method"], "runs": shown["runs"], MAIN: shown[MAIN],
                         f"HR@{PAIRED_K}": shown[f"HR@{PAIRED_K}"],
                         **_delta_cells(table.comparisons.get(shown["method"]))})
    return pd.DataFrame(recs).to_markdown(index=False, disable_numparse=True)


def full_md(table: Table, ks: list[int]) -> str:
    """Every K (HR@1 = NDCG@1 shown once), the row's runs and source files; no tests."""
    cols = ["method", "runs"]
    for k in ks:
        cols += [f"HR@{k}"] if k == 1 else [f"HR@{k}", f"NDCG@{k}"]
    shown = table.shown[cols + ["source"]].rename(columns={"HR@1": "HR@1 = NDCG@1"})
    return shown.to_markdown(index=False, disable_numparse=True)


def readme_block(results: Path, datasets: list[str], variants: list[str], seed: int = 42) -> str:
    """The README's result block: per dataset a compact table (HR@10, NDCG@10, n, tsrec − row paired CI) of the
    best baseline, the transition floor and the TS-Rec variants of the cpu profile, and the paper's claim beside
    ours. ``tsrec report --readme README.md`` writes it between the README's markers; a test checks it."""
    out = []
    for ds in datasets:
        table = dataset_table(results, ds, [PAIRED_K], variants, seed)
        best = best_baseline(table.rows)
        keep = [r for r in table.rows if r.runs and (r is best or r.runs.name == "transition" or
                                                     (r.kind == "variant" and r.runs.name in VARIANTS))]
        recs = []
        for r in keep:
            shown = next(x for x, y in zip(table.shown.to_dict("records"), table.rows) if y is r)
            c = _delta_cells(table.comparisons.get(shown["method"]))
            recs.append({"method": shown["method"], "n": str(len(r.runs.seeds)),
                         f"HR@{PAIRED_K}": shown[f"HR@{PAIRED_K}"], MAIN: shown[MAIN], DELTA: c[DELTA],
                         "seed test p": c["seed test p"]})
        ours = next((r.runs for r in table.rows if r.runs and r.runs.name == OURS), None)
        claim = f"paper: TS-Rec {PAPER_GAIN[ds]:+.2f} % {MAIN} vs its best baseline" if ds in PAPER_GAIN else ""
        if ours and best:
            a, b = ours.mean_ci(MAIN)[0], best.runs.mean_ci(MAIN)[0]
            mine = (f"here: `tsrec` {100 * (a / b - 1):+.1f} % vs the best baseline, {best.label}, "
                    f"mean of {len(ours.seeds)} seeds")
            claim = "; ".join(x for x in (claim, mine) if x)
        out += [f"**{ds}** ({claim})", "", pd.DataFrame(recs).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(out).rstrip() + "\n"


README_BEGIN = ("<!-- tsrec report: results (generated from results/ by `tsrec report --readme README.md`; "
                "do not edit) -->")
README_END = "<!-- tsrec report: end of results -->"


def write_readme(path: Path, block: str) -> bool:
    """Replace the text between the README's markers with ``block``; False (and nothing written) without them."""
    if not path.is_file():
        raise TsrecError("no such README (tsrec report --readme)", file=path)
    text = path.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        log.warning("%s: no result markers (%s ... %s); not written", path, README_BEGIN, README_END)
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with atomic_file(path) as fh:
        fh.write(f"{head}{README_BEGIN}\n{block}{README_END}{tail}")
    return True


def readme_current(path: Path) -> str | None:
    """The block between the README's markers, None without them."""
    text = Path(path).read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return None
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].removeprefix("\n")


def published_md(ds: str, ks: list[int]) -> str | None:
    pub = published_rows(ds)
    if not len(pub):
        return None
    cols = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    shown = pd.DataFrame({"method": pub["model"],
                          **{c: [f"{v:.4f}" for v in pub[c]] if c in PUBLISHED_COLUMNS else "—" for c in cols}})
    return shown.to_markdown(index=False, disable_numparse=True)


def summary_lines(comparisons: dict, shown: pd.DataFrame) -> list[str]:
    """One line each for tsrec vs sft and tsrec vs the best baseline."""
    out = []
    for label in shown["method"]:
        if label.startswith(VARIANTS["sft"]) or label.endswith("(best baseline)"):
            c = comparisons.get(label)
            if c is None:
                out.append(f"- TS-Rec vs {label}: not available (a side has not run).")
            else:
                gain = "n/a" if c["gain"] is None else f"{100 * c['gain']:+.1f} %"
                d = _delta_cells(c)
                out.append(f"- TS-Rec vs {label}: {MAIN} {gain}; tsrec − row {d[DELTA].replace(' [', ', 95 % CI [')}"
                           f" ({d['paired on']}; HR@{PAIRED_K} sign p={d[f'HR@{PAIRED_K} sign p']}); "
                           f"seeds: {_seed_cell(c)}.")
    return out


# ---------------------------------------------------------------- plots
def _save(fig, path: Path) -> Path:
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def _pyplot():
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
    plt = _pyplot()
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
    _save(fig, dest)
    plt.close(fig)
    return dest


def plot_valid_ndcg(results: Path, ds: str, dest: Path) -> Path | None:
    """Valid NDCG@10 (train.rank_rows) against the step, one line per run (variant x seed); None without curves."""
    plt = _pyplot()
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
    _save(fig, dest)
    plt.close(fig)
    return dest


def plot_hr_at_k(rows: list[Row], ks: list[int], ds: str, dest: Path) -> Path:
    plt = _pyplot()
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
    _save(fig, dest)
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
    plt = _pyplot()
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
    _save(fig, dest)
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
    plt = _pyplot()
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
    _save(fig, dest)
    plt.close(fig)
    return dest


# ---------------------------------------------------------------- the stage
def write_dataset(results: Path, ds: str, ks: list[int], variants: list[str], seed: int = 42,
                  matrix: tuple[list[str], list[int]] | None = None) -> list[str]:
    """CSV + plots of one dataset; returns its Markdown section. ``matrix``: the ablation matrix's
    (train.variants, train.seeds), whose share of the ledger's time is stated apart."""
    table = dataset_table(results, ds, ks, variants, seed)
    shown = table.shown
    with atomic_file(results / ds / "table.csv") as fh:
        table.numeric.to_csv(fh, index=False)
    plots = results / ds / "plots"
    plot_valid_loss(results, ds, list(CURVE_VARIANTS), plots / "valid_loss.png")
    plot_hr_at_k(table.rows, ks, ds, plots / "hr_at_k.png")
    with_rl = rl_variants(results, ds)
    links = ""
    if plot_valid_ndcg(results, ds, plots / "valid_ndcg.png") is not None:
        links += f", [valid NDCG@10 per run]({ds}/plots/valid_ndcg.png)"
    if plot_baseline_curves(results, ds, plots / "baselines_valid.png") is not None:
        links += f", [baselines per epoch vs the floors]({ds}/plots/baselines_valid.png)"
    if with_rl:
        plot_rl(results, ds, with_rl, plots / "rl.png")
        links += f", [GRPO curves]({ds}/plots/rl.png)"
    main_rows = [r for r in table.rows if not is_profile_row(r)]
    profile_rows = [r for r in table.rows if is_profile_row(r)]
    parts = [f"## {ds}", "",
             f"SID level, test split, full ranking. Every K and the source files: the second table below and "
             f"`{ds}/table.csv`. Plots: [valid loss]({ds}/plots/valid_loss.png), "
             f"[HR@K vs K]({ds}/plots/hr_at_k.png){links}.", "",
             headline_md(table, main_rows), ""]
    if profile_rows:
        parts += [f"### {ds}: runs of the `authors` / `paper` profiles", "",
                  "Other protocols (profiles/*.yaml; deviations in docs/profiles.md), compared with the cpu "
                  "profile's `tsrec` on the same rows.", "", headline_md(table, profile_rows), ""]
    parts += summary_lines(table.comparisons, shown) + [""]
    ledger = run_ledger(results, ds)
    if not ledger.empty:
        with atomic_file(results / ds / "runs.csv") as fh:
            ledger.to_csv(fh, index=False)
    parts += [f"### {ds}: every K", "", full_md(table, ks), ""]
    parts += ledger_lines(ledger, ds, matrix)
    pub = published_md(ds, ks)
    if pub:
        parts += [f"### {ds}: {PUBLISHED_LABEL}", "",
                  "MiniOneRec paper (arXiv 2510.24431), Table 1; not our runs, context only "
                  "(— = not published).", "", pub, ""]
    return parts


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


def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) to tabulate (default: data.datasets)")
    p.add_argument("--readme", help="also write the result block between the markers of this README")


def run(args, params) -> None:
    cfg = section(params, "report", ReportConfig)
    datasets = args.dataset or (params.get("data") or {}).get("datasets") or []
    variants = list((params.get("variants") or {}).keys())
    seed = global_seed(params)
    results = Path(cfg.results)
    parts = ["# Results tables", "",
             "Generated by `tsrec report` from the files under `results/`; each row names its source files, whose",
             "run records say which command and profile produced them. Test split, full ranking.", "",
             "* **Granularity**: every number here is SID level (a generated SID is a hit for every item sharing "
             "it, the authors' protocol). Item-level numbers of the baselines: results/baselines.md.",
             "* **Cells**: mean over seeds ± half-width of the 95 % Student-t interval (n - 1 dof); `runs` says n "
             "and the seeds; one run shows its value (n=1). \"not run\" = no files, never filled in.",
             f"* **{DELTA}**: `tsrec` minus the row, so positive = `tsrec` above the row; "
             f"{stats.ROW_TEST.format(k=PAIRED_K, n_boot=N_BOOT)}. Runs are paired by "
             "seed (`paired on`); a method with one run (deterministic) is paired with every seed of `tsrec`.",
             f"* **seed test p**: {stats.SEED_TEST} on {MAIN}; n/a with fewer than 2 seeds. A row CI holds the "
             "trained models fixed; the seed test is what a retrain faces.",
             f"* **Relative gain** (`tsrec` / row - 1 on {MAIN}) and all K: `<DS>/table.csv`.", ""]
    train = params.get("train") or {}  # the train matrix as dvc.yaml and config.check_top_level read it
    matrix = (list(train.get("variants") or []), list(train.get("seeds") or []))
    with commit_group():  # every table and plot, or (a full disk, a signal) none: they never disagree
        for ds in datasets:
            in_matrix = ds in (train.get("datasets") or []) and all(matrix)
            parts += write_dataset(results, ds, cfg.ks, variants, seed, matrix if in_matrix else None)
        with atomic_file(cfg.out) as fh:
            fh.write("\n".join(parts))
        baselines_md = write_table(results, datasets)
        readme = args.readme and write_readme(Path(args.readme), readme_block(results, datasets, variants, seed))
    log.info("wrote %s and %s", cfg.out, baselines_md)
    if readme:
        log.info("wrote the result block of %s", args.readme)
    print("\n".join(parts))
