"""results/baselines.md: our baseline rows (from results/<DS>/baselines/<model>.json, the mean over seeds, and
the sft variant's metrics) at both granularities, with 95 % t-intervals over seeds, the per-seed runs and every
tuning config tried; in a separate table, the published MiniOneRec Table-1 numbers for context only.

Numbers come from the metrics files, the rest (native unit, epochs, stopping reasons, configs tried) from the
run records beside them (``tsrec.eval.metrics.read_with_run``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tsrec.core.io import atomic_file
from tsrec.data.layout import baseline_seed_file, baseline_summary
from tsrec.eval.records import load_variant
from tsrec.eval.metrics import ITEM_PREFIX, KS, mean_ci, read_item_metrics, read_metrics, read_with_run

# (display name, source): "baseline:<model>" reads results/<DS>/baselines/<model>.json, "variant:<v>" reads
# results/<DS>/<v>/seed<N>/metrics.json (every seed; tsrec.data.layout), "llm:<m>" the same files of an LLM baseline
# (tsrec.baselines.llm_scoring), None = not run by us (never filled from a paper).
ROWS = [
    ("Pop", "baseline:pop"),
    ("Transition (floor)", "baseline:transition"),
    ("GRU4Rec", "baseline:gru4rec"),
    ("Caser", "baseline:caser"),
    ("SASRec", "baseline:sasrec"),
    ("HSTU", "baseline:hstu"),
    ("TIGER", "baseline:tiger"),
    ("LC-Rec (= our sft variant)", "variant:sft"),
    ("MiniOneRec-SFT (= our sft variant)", "variant:sft"),
    ("BIGRec", "llm:bigrec"),
    ("D3", "llm:d3"),
    ("S-DPO", "llm:sdpo"),
    ("MiniOneRec-GRPO (= our sft_rl: sft + GRPO)", "variant:sft_rl"),
]

# MiniOneRec Table 1 (Qwen2.5, 8 GPUs, official train split), copied from REFERENCE.md section 6.
# Order: HR@3 NDCG@3 HR@5 NDCG@5 HR@10 NDCG@10. Context only: a different split, scale and hardware.
PUBLISHED_LABEL = "published, official split, Qwen2.5-1.5B, not comparable in absolute terms"
PUBLISHED_COLUMNS = ["HR@3", "NDCG@3", "HR@5", "NDCG@5", "HR@10", "NDCG@10"]
PUBLISHED = {
    "Industrial_and_Scientific": {
        "GRU4Rec": (.0638, .0542, .0774, .0598, .0999, .0669),
        "Caser": (.0618, .0514, .0717, .0555, .0942, .0628),
        "SASRec": (.0790, .0700, .0909, .0748, .1088, .0806),
        "HSTU": (.0927, .0885, .1037, .0918, .1163, .0958),
        "TIGER": (.0852, .0742, .1010, .0807, .1321, .0908),
        "LC-Rec": (.0915, .0805, .1057, .0862, .1332, .0952),
        "BIGRec": (.0931, .0841, .1092, .0907, .1370, .0997),
        "D3": (.1024, .0991, .1213, .0989, .1500, .1082),
        "S-DPO": (.1032, .0906, .1238, .0991, .1524, .1082),
        "MiniOneRec": (.1143, .1011, .1321, .1084, .1586, .1167),
    },
    "Office_Products": {
        "GRU4Rec": (.0629, .0528, .0789, .0595, .1019, .0669),
        "Caser": (.0748, .0615, .0865, .0664, .1093, .0737),
        "SASRec": (.0861, .0769, .0949, .0805, .1120, .0858),
        "HSTU": (.1134, .1031, .1252, .1079, .1400, .1126),
        "TIGER": (.0986, .0852, .1163, .0960, .1408, .1002),
        "LC-Rec": (.0921, .0807, .1048, .0859, .1237, .0920),
        "BIGRec": (.1069, .0961, .1204, .1017, .1434, .1091),
        "D3": (.1204, .1055, .1406, .1139, .1634, .1213),
        "S-DPO": (.1169, .1033, .1356, .1110, .1587, .1255),
        "MiniOneRec": (.1217, .1088, .1420, .1172, .1634, .1242),
    },
}
METRICS = [f"{n}@{k}" for k in KS for n in ("HR", "NDCG")]


FLOOR = "Transition (floor)"
NOT_LEARNED = ("Pop", FLOOR)


def source_path(results: Path, ds: str, src: str) -> Path:
    """Metrics file of a ``baseline:<m>`` row source (the summary over seeds)."""
    kind, _, what = src.partition(":")
    if kind != "baseline":
        raise ValueError(f"not a baseline source: {src!r}")
    return baseline_summary(results, ds, what)


def published_rows(ds: str) -> pd.DataFrame:
    """MiniOneRec Table 1 rows of ``ds`` (columns: model + ``PUBLISHED_COLUMNS``); empty if none."""
    return pd.DataFrame([{"model": m, **dict(zip(PUBLISHED_COLUMNS, v))} for m, v in PUBLISHED.get(ds, {}).items()],
                        columns=["model", *PUBLISHED_COLUMNS])


def our_rows(results: Path, ds: str) -> pd.DataFrame:
    """One row per method: SID-level metrics (top-level keys), item-level ones (``item/``), the 95 % t
    half-widths over seeds (``<metric> ci``), and for baselines valid NDCG@10, epochs and stopping reasons."""
    rows = []
    for name, src in ROWS:
        row: dict = {"model": name, "status": "not run"}
        if (src or "").startswith(("variant:", "llm:")):
            runs = load_variant(results, ds, src.split(":")[1])
            if runs is not None and all(m in runs.metrics[s] for s in runs.seeds for m in METRICS):
                row.update(status="ok", unit="sid" if src.startswith("variant:") else "item", runs=len(runs.seeds))
                for m in METRICS:
                    row[m], row[f"{m} ci"] = runs.mean_ci(m)
                if src.startswith("llm:"):  # item level too (the same files, ``item/`` keys)
                    item = [read_item_metrics(f) for f in runs.sources]
                    for m in METRICS:
                        vals = [x[m] for x in item if m in x]
                        if len(vals) == len(item):
                            row[ITEM_PREFIX + m], row[f"{ITEM_PREFIX}{m} ci"] = mean_ci(vals)
            rows.append(row)
            continue
        path = source_path(results, ds, src) if src else None
        if path is not None and path.is_file():
            sid, item = read_metrics(path, allow_empty=True), read_item_metrics(path)
            if all(m in sid for m in METRICS) or all(m in item for m in METRICS):  # one level may be missing
                row.update(status="ok", **{m: sid[m] for m in METRICS if m in sid})
                row.update({ITEM_PREFIX + m: v for m, v in item.items() if m in METRICS})
                rec = read_with_run(path)
                ci = rec.get("ci95") or {}
                row.update({f"{k} ci": ci.get(k) for k in [*METRICS, *(ITEM_PREFIX + m for m in METRICS)]})
                row.update({"unit": rec.get("native_unit"), "runs": rec.get("n_runs"),
                            "valid NDCG@10": rec.get("valid_NDCG@10"),
                            "epochs": "/".join(str(e) for e in rec.get("epochs") or [] if e is not None) or None,
                            "stopped": "/".join(sorted({s for s in rec.get("stopped") or [] if s})) or None,
                            "partial": bool(rec.get("max_rows") or rec.get("tuning_restricted_to"))})
        rows.append(row)
    cols = ["model", "status", "unit", "runs", *METRICS, *(ITEM_PREFIX + m for m in METRICS),
            *(f"{m} ci" for m in METRICS), *(f"{ITEM_PREFIX}{m} ci" for m in METRICS),
            "valid NDCG@10", "epochs", "stopped", "partial"]
    return pd.DataFrame(rows, columns=cols)


def baseline_runs(results: Path, ds: str):
    """(display name, model, per-seed records: metrics merged with their run records) of every baseline that
    has a summary with seed files."""
    for name, src in ROWS:
        if not (src or "").startswith("baseline:"):
            continue
        model = src.split(":")[1]
        path = source_path(results, ds, src)
        if not path.is_file():
            continue
        seeds = read_with_run(path).get("seeds") or []
        recs = [read_with_run(f) for f in (baseline_seed_file(results, ds, model, s) for s in seeds) if f.is_file()]
        if recs:
            yield name, model, recs


def run_rows(results: Path, ds: str) -> pd.DataFrame:
    """Every per-seed run: test NDCG@10 at both levels, valid NDCG@10, epochs, best epoch, stopping reason."""
    rows = []
    for name, _, recs in baseline_runs(results, ds):
        for r in recs:
            rows.append({"model": name, "seed": r.get("seed"), "NDCG@10": r.get("NDCG@10"),
                         "item/NDCG@10": r.get(ITEM_PREFIX + "NDCG@10"),
                         "valid NDCG@10": (r.get("valid") or {}).get("NDCG@10"), "epochs": r.get("epochs"),
                         "best epoch": r.get("best_epoch"), "stopped": r.get("stopped") or "",
                         "train s": r.get("train_time_s")})
    return pd.DataFrame(rows, columns=["model", "seed", "NDCG@10", "item/NDCG@10", "valid NDCG@10", "epochs",
                                       "best epoch", "stopped", "train s"])


def tuning_rows(results: Path, ds: str) -> pd.DataFrame:
    """Every tuning config tried (valid only, first seed), from the first seed file of each baseline."""
    rows = []
    for name, _, recs in baseline_runs(results, ds):
        tuning = recs[0].get("tuning") or {}
        for t in tuning.get("configs", []):
            rows.append({"model": name, "config": json.dumps(t["config"]) if t["config"] else "(none)",
                         "chosen": "*" if t.get("index") == tuning.get("chosen") else "",
                         "valid NDCG@10": t["valid_NDCG@10"], "valid rows": t.get("valid_rows_scored"),
                         "epochs": t.get("epochs"), "best epoch": t.get("best_epoch"),
                         "stopped": t.get("stopped", ""), "wall s": t.get("wall_s")})
    return pd.DataFrame(rows, columns=["model", "config", "chosen", "valid NDCG@10", "valid rows", "epochs",
                                       "best epoch", "stopped", "wall s"])


def sanity(df: pd.DataFrame, prefix: str = "") -> list[str] | None:
    """Learned baselines whose test NDCG@10 at one level (SID: prefix "", item: ``ITEM_PREFIX``) does not beat
    Pop's; None where Pop has no metrics at that level."""
    col = prefix + "NDCG@10"
    ok = df[(df["status"] == "ok") & df[col].notna()].set_index("model")
    if "Pop" not in ok.index:
        return None
    pop = ok.loc["Pop", col]
    return [m for m in ok.index if m not in NOT_LEARNED and not ok.loc[m, col] > pop]


def below_floor(df: pd.DataFrame) -> list[str]:
    """Learned baselines whose valid NDCG@10 (SID level, mean over seeds) is below the transition floor's."""
    ok = df[(df["status"] == "ok") & df["valid NDCG@10"].notna()].set_index("model")
    if FLOOR not in ok.index:
        return []
    floor = ok.loc[FLOOR, "valid NDCG@10"]
    return [m for m in ok.index if m not in NOT_LEARNED and ok.loc[m, "valid NDCG@10"] < floor]


def _fmt(v, spec: str) -> str:
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else format(v, spec)


TEXT_COLS = ("model", "status", "config", "stopped", "unit", "chosen", "epochs")


def _md(df: pd.DataFrame) -> str:
    shown = df.astype(object).copy()
    for col in shown.columns:
        spec = {"train s": ".0f", "wall s": ".0f", "valid rows": ".0f", "seed": ".0f", "runs": ".0f",
                "best epoch": ".0f", "epochs": ".0f"}.get(col, "" if col in TEXT_COLS else ".4f")
        shown[col] = [v if isinstance(v, str) else _fmt(v, spec) for v in shown[col]]
    align = ["left" if c in TEXT_COLS else "right" for c in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def level_table(df: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """The metric columns of one granularity as "mean +- ci" strings (ci: 95 % t half-width over seeds)."""
    out = df[["model", "status", "unit", "runs"]].copy()
    for m in METRICS:
        means, cis = df.get(prefix + m), df.get(f"{prefix}{m} ci")
        out[m] = [("" if mean is None or pd.isna(mean) else f"{mean:.4f}"
                   + ("" if ci is None or pd.isna(ci) else f" ± {ci:.4f}"))
                  for mean, ci in zip(means if means is not None else [None] * len(df),
                                      cis if cis is not None else [None] * len(df))]
    # a level exists only where the metrics file carries it (the first baseline runs: the model's native unit)
    out.loc[(out["HR@10"] == "") & (df["status"] == "ok"), "status"] = \
        "no item-level metrics" if prefix else "no SID-level metrics"
    out["runs"] = [None if r is None or pd.isna(r) else r for r in out["runs"]]
    return out


def render(results: Path, datasets: list[str]) -> str:
    parts = ["# Baselines (our runs, reconstructed-train protocol, test split)", "",
             "Produced by `tsrec baseline` (per seed: `results/<DS>/baselines/<model>/seed<N>.json` with the "
             "metrics, its run record `seed<N>.run.json` with learning curve, stopping reason and every tuning "
             "config tried; mean over seeds: `results/<DS>/baselines/<model>.json` and its `<model>.run.json`); "
             "table by `tsrec report` (or `tsrec baseline --table`). "
             "\"not run\" rows were not run by us and are never filled from a paper.", "",
             "Protocol: every learned model tried the same grid on VALID (lr x dropout x width, `baselines.tuning`; "
             "same number of configs per model), each config trained to its valid plateau (epochs + patience, no "
             "wall-clock budget), chosen on SID-level valid NDCG@10; the chosen config was then trained once per "
             "seed (`baselines.seeds`). Cells are mean ± half-width of the 95 % Student-t interval over seeds; "
             "Pop and Transition are deterministic (one run, no interval).", "",
             "Two granularities (`unit` = what the model ranks natively):", "",
             "* **SID level** (the authors' protocol, the LLM variants' metrics): a ranked SID is a hit for every "
             "item sharing it; an item ranker's list is read as the list of its items' distinct SIDs.",
             "* **item level**: a ranked item must be the target item; a SID ranker's SIDs (TIGER) expand to their "
             "items in one fixed order: train popularity (descending), then item id (ascending).", "",
             "Train = the RECONSTRUCTED split (~10k (prefix -> next) pairs per dataset, rebuilt from each user's "
             "first valid/test history; the official train CSV is not in the mirror).", ""]
    for ds in datasets:
        df = our_rows(results, ds)
        low = below_floor(df)
        partial = df.loc[df["partial"].fillna(False).astype(bool), "model"].tolist()
        checks = [(level, sanity(df, prefix)) for level, prefix in (("SID level", ""), ("item level", ITEM_PREFIX))]
        checks = [(level, bad) for level, bad in checks if bad is not None] or [("SID level", [])]
        parts += [f"## {ds}", "", "### SID level (authors' protocol)", "", _md(level_table(df)), "",
                  "### Item level", "", _md(level_table(df, ITEM_PREFIX)), "",
                  *(f"Sanity (every learned model beats Pop on test NDCG@10, {level}): "
                    + ("holds." if not bad else f"FAILS for {', '.join(bad)}.") for level, bad in checks),
                  "Transition floor (valid NDCG@10, SID level): "
                  + ("every learned model is above it." if not low else f"BELOW it: {', '.join(low)}."), ""]
        if partial:
            parts += [f"Partial runs (--max-rows / --config, checks only, not results): {', '.join(partial)}.", ""]
        runs = run_rows(results, ds)
        if len(runs):
            parts += [f"Runs per seed on {ds} (learning curves in the seed files):", "", _md(runs), ""]
        tuning = tuning_rows(results, ds)
        if len(tuning):
            parts += [f"Tuning tried on {ds} (valid split only, first seed; * = chosen):", "", _md(tuning), ""]
    parts += [f"## MiniOneRec Table 1 ({PUBLISHED_LABEL}; context only, NOT our runs)", "",
              "Qwen2.5 backbones, full official train split, 8 GPUs. Not comparable row-for-row with the "
              "tables above (different train split, model scale and hardware).", ""]
    for ds in datasets:
        pub = published_rows(ds)
        if len(pub):
            parts += [f"### {ds} ({PUBLISHED_LABEL})", "", _md(pub), ""]
    return "\n".join(parts)


def write_table(results: Path, datasets: list[str]) -> Path:
    path = Path(results) / "baselines.md"
    text = render(Path(results), datasets)
    with atomic_file(path) as fh:
        fh.write(text)
    return path
