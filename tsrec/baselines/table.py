"""results/baselines.md: our baseline rows (from results/<DS>/baselines/*.json and the sft variant's metrics)
and, in a separate table, the published MiniOneRec Table-1 numbers for context only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tsrec.io import atomic_file
from tsrec.metrics import KS, read_metrics

# (display name, source): "baseline:<model>" reads results/<DS>/baselines/<model>.json, "variant:<v>" reads
# results/<DS>/<v>/metrics.json, None = not run by us (never filled from a paper).
ROWS = [
    ("Pop", "baseline:pop"),
    ("GRU4Rec", "baseline:gru4rec"),
    ("Caser", "baseline:caser"),
    ("SASRec", "baseline:sasrec"),
    ("HSTU", "baseline:hstu"),
    ("TIGER", "baseline:tiger"),
    ("LC-Rec (= our sft variant)", "variant:sft"),
    ("MiniOneRec-SFT (= our sft variant)", "variant:sft"),
    ("BIGRec", None),
    ("D3", None),
    ("S-DPO", None),
    ("MiniOneRec-GRPO", None),
]

# MiniOneRec Table 1 (Qwen2.5, 8 GPUs, official train split), copied from REFERENCE.md section 6.
# Order: HR@3 NDCG@3 HR@5 NDCG@5 HR@10 NDCG@10. Context only: a different split, scale and hardware.
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


def source_path(results: Path, ds: str, src: str) -> Path:
    """Metrics file of a row source: ``baseline:<m>`` or ``variant:<v>``."""
    kind, _, what = src.partition(":")
    if kind == "baseline":
        return results / ds / "baselines" / f"{what}.json"
    return results / ds / what / "metrics.json"


def our_rows(results: Path, ds: str) -> pd.DataFrame:
    rows = []
    for name, src in ROWS:
        row: dict = {"model": name, "status": "not run"}
        path = source_path(results, ds, src) if src else None
        if path is not None and path.is_file():
            metrics = read_metrics(path)
            if all(m in metrics for m in METRICS):
                row.update(status="ok", **{m: metrics[m] for m in METRICS})
                if src.startswith("baseline:"):
                    rec = json.loads(path.read_text(encoding="utf-8"))
                    row.update({"valid NDCG@10": rec.get("best_valid_NDCG@10"), "epochs": rec.get("epochs"),
                                "train s": rec.get("train_time_s")})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "status", *METRICS, "valid NDCG@10", "epochs", "train s"])


def tuning_rows(results: Path, ds: str) -> pd.DataFrame:
    """Every tuning config tried (valid only), from the baseline JSONs."""
    rows = []
    for name, src in ROWS:
        path = results / ds / "baselines" / f"{(src or ':').split(':')[1]}.json"
        if not (src or "").startswith("baseline:") or not path.is_file():
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        for t in rec.get("tuning", []):
            rows.append({"model": name, "config": json.dumps(t["override"]) if t["override"] else "(defaults)",
                         "valid NDCG@10": t["valid_NDCG@10"], "valid rows": t.get("valid_rows_scored"),
                         "epochs": t.get("epochs"), "stopped": t.get("stopped", ""), "wall s": t.get("wall_s")})
    return pd.DataFrame(rows, columns=["model", "config", "valid NDCG@10", "valid rows", "epochs", "stopped", "wall s"])


def sanity(df: pd.DataFrame) -> list[str]:
    """Learned baselines whose test NDCG@10 does not beat Pop's."""
    ok = df[df["status"] == "ok"].set_index("model")
    if "Pop" not in ok.index:
        return []
    pop = ok.loc["Pop", "NDCG@10"]
    return [m for m in ok.index if m != "Pop" and not ok.loc[m, "NDCG@10"] > pop]


def _fmt(v, spec: str) -> str:
    return "" if v is None or pd.isna(v) else format(v, spec)


def _md(df: pd.DataFrame) -> str:
    shown = df.astype(object).copy()
    for col in shown.columns:
        spec = {"epochs": ".0f", "train s": ".0f", "wall s": ".0f", "valid rows": ".0f"}.get(
            col, "" if col in ("model", "status", "config", "stopped") else ".4f")
        shown[col] = [_fmt(v, spec) for v in shown[col]]
    align = ["left" if c in ("model", "status", "config", "stopped") else "right" for c in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def render(results: Path, datasets: list[str]) -> str:
    parts = ["# Baselines (our runs, reconstructed-train protocol, test split)", "",
             "Produced by `tsrec baseline` (commands, params and tuning trials in "
             "`results/<DS>/baselines/<model>.json`); table by `tsrec report` (or `tsrec baseline --table`). ID-based models rank "
             "all items (full softmax); TIGER and the LLM variants rank SIDs from constrained beam search "
             "(20 beams). \"not run\" rows were not run by us and are never filled from a paper.", "",
             "Notes: train = the RECONSTRUCTED split (~10k (prefix -> next) pairs per dataset, rebuilt from each "
             "user's first valid/test history; the official train CSV is not in the mirror); every learned model got the same tuning budget (`baselines.tuning`, "
             "chosen on valid NDCG@10, see the tuning tables) and a per-config wall-clock cap "
             "(`max_minutes`; `stopped = max_minutes` marks a capped run, e.g. TIGER). TIGER ranks SIDs: items "
             "sharing a SID in the official index (3,686 items on 3,670 SIDs for Industrial, 3,459 on 3,444 for "
             "Office) count as one, the same convention as the LLM evaluation.", ""]
    for ds in datasets:
        df = our_rows(results, ds)
        bad = sanity(df)
        parts += [f"## {ds}", "", _md(df), "",
                  "Sanity (every learned model beats Pop on test NDCG@10): "
                  + ("holds." if not bad else f"FAILS for {', '.join(bad)}."), ""]
        tuning = tuning_rows(results, ds)
        if len(tuning):
            parts += [f"Tuning tried on {ds} (valid split only; the best config per model is the row above):", "",
                      _md(tuning), ""]
    parts += ["## Published, 8 GPUs, official split (MiniOneRec Table 1; context only, NOT our runs)", "",
              "Qwen2.5 backbones, full official train split, 8 GPUs. Not comparable row-for-row with the "
              "tables above (different train split, model scale and hardware).", ""]
    for ds in datasets:
        if ds in PUBLISHED:
            pub = pd.DataFrame([{"model": m, **dict(zip(PUBLISHED_COLUMNS, v))} for m, v in PUBLISHED[ds].items()])
            parts += [f"### {ds} (published)", "", _md(pub), ""]
    return "\n".join(parts)


def write_table(results: Path, datasets: list[str]) -> Path:
    path = Path(results) / "baselines.md"
    text = render(Path(results), datasets)
    with atomic_file(path) as fh:
        fh.write(text)
    return path
