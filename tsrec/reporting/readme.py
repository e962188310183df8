"""The README's result block: per dataset a compact table of the best baseline, the transition floor and the
TS-Rec variants of the cpu profile, with the paper's claim beside ours; written between the README's markers
by ``tsrec report --readme README.md`` (tests/test_docs.py checks it is current)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_file
from tsrec.reporting.tables import (DELTA, MAIN, OURS, PAIRED_K, VARIANTS, best_baseline, dataset_table,
                                    delta_cells)

log = logging.getLogger(__name__)

# the paper's claim, TS-Rec over the best baseline on NDCG@10 (TS-Rec paper, arXiv 2602.22632), shown beside ours
PAPER_GAIN = {"Industrial_and_Scientific": 7.17, "Office_Products": 4.27}


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
            c = delta_cells(table.comparisons.get(shown["method"]))
            recs.append({"method": shown["method"], "n": str(len(r.runs.seeds)),
                         f"HR@{PAIRED_K}": shown[f"HR@{PAIRED_K}"], MAIN: shown[MAIN], DELTA: c[DELTA],
                         "seed test p": c["seed test p"]})
        ours = next((r.runs for r in table.rows if r.runs and r.runs.name == OURS), None)
        claim = f"paper: TS-Rec {PAPER_GAIN[ds]:+.2f} % {MAIN} vs its best baseline" if ds in PAPER_GAIN else ""
        if ours and best:
            a, b = ours.mean_ci(MAIN)[0], best.runs.mean_ci(MAIN)[0]
            mine = (f"here: `tsrec` {100 * (a / b - 1):+.1f} % vs the best baseline, {best.label}, "
                    + (f"mean of {len(ours.seeds)} seeds" if len(ours.seeds) > 1 else "one seed"))
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
