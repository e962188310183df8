"""The main results table of one dataset: its rows (baselines, the methods we do not run, the TS-Rec
variants), their cells (mean ± the 95 % Student-t half-width over seeds) and tsrec's comparison with each row
(relative gain on NDCG@10, a paired test on per-row ranks pooled over seeds, a seed-level test: tsrec.eval.stats),
and its Markdown views (headline, every K, published rows).

Rows: the baselines (mean over ``baselines.seeds``), then TS-Rec and its ablations (mean over ``train.seeds``).
One run shows its value and n=1. A method without files is "not run", never filled in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from tsrec.baselines.table import PUBLISHED_COLUMNS, PUBLISHED_LABEL, ROWS, published_rows
from tsrec.core.errors import TsrecError
from tsrec.data import layout
from tsrec.eval import stats
from tsrec.eval.records import Runs, load_baseline, load_variant

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
ITEM_ONLY = "item level only (results/baselines.md)"  # a baseline whose files hold no SID-level metrics



@dataclasses.dataclass
class Row:
    label: str
    kind: str                     # baseline | variant | not ours (never run here)
    runs: Runs | None
    status: str = "not run"


def method_rows(results: Path, ds: str, variants: list[str]) -> list[Row]:
    """Baselines (table.ROWS order), the methods we do not run, then the variants (VARIANTS order, then any
    other declared or found)."""
    rows = []
    for label, src in ROWS:
        kind, _, name = (src or "").partition(":")
        if kind == "baseline":
            runs = load_baseline(results, ds, name)
            if runs is not None and not any(runs.metrics.values()):  # ran, but this table is SID level
                rows.append(Row(label, "baseline", None, ITEM_ONLY))
            else:
                rows.append(Row(label, "baseline", runs, "ok" if runs else "not run"))
        elif kind == "llm":  # tsrec.commands.llm_baseline: the evaluate stage's files under results/<DS>/<model>/
            runs = load_variant(results, ds, name)
            rows.append(Row(label, "baseline", runs, "ok" if runs else "not run"))
        elif not src:
            rows.append(Row(label, "not ours", None, "not run (not implemented here)"))
    names = list(dict.fromkeys([*VARIANTS, *variants, *layout.found_variants(results, ds)]))
    for v in names:
        runs = load_variant(results, ds, v)
        status = "ok" if runs else ("not run (old layout: run `tsrec migrate-seed-layout`)"
                                    if layout.old_layout(results, ds, v) else "not run")
        if status.startswith("not run (old"):
            log.warning("%s/%s: files without a seed folder; run `tsrec migrate-seed-layout`", ds, v)
        rows.append(Row(VARIANTS.get(v, f"TS-Rec variant `{v}`"), "variant", runs, status))
    return rows


def best_baseline(rows: list[Row]) -> Row | None:
    ran = [r for r in rows if r.kind == "baseline" and r.runs and r.runs.mean_ci(MAIN)[0] is not None]
    return max(ran, key=lambda r: r.runs.mean_ci(MAIN)[0]) if ran else None


def compare(ours: Runs, other: Runs, seed: int = 42) -> dict:
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


def _source_cell(runs: Runs | None, results: Path) -> str:
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


def seed_cell(c: dict) -> str:
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
                      "seed test": seed_cell(c) if c else "",
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


def is_profile_row(row: Row) -> bool:
    return bool(row.runs and row.runs.name.startswith(PROFILE_PREFIXES))


def delta_cells(c: dict | None) -> dict[str, str]:
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
                         **delta_cells(table.comparisons.get(shown["method"]))})
    return pd.DataFrame(recs).to_markdown(index=False, disable_numparse=True)


def full_md(table: Table, ks: list[int]) -> str:
    """Every K (HR@1 = NDCG@1 shown once), the row's runs and source files; no tests."""
    cols = ["method", "runs"]
    for k in ks:
        cols += [f"HR@{k}"] if k == 1 else [f"HR@{k}", f"NDCG@{k}"]
    shown = table.shown[cols + ["source"]].rename(columns={"HR@1": "HR@1 = NDCG@1"})
    return shown.to_markdown(index=False, disable_numparse=True)


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
                d = delta_cells(c)
                out.append(f"- TS-Rec vs {label}: {MAIN} {gain}; tsrec − row {d[DELTA].replace(' [', ', 95 % CI [')}"
                           f" ({d['paired on']}; HR@{PAIRED_K} sign p={d[f'HR@{PAIRED_K} sign p']}); "
                           f"seeds: {seed_cell(c)}.")
    return out
