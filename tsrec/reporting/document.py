"""The report (``tsrec report``): the main table per dataset (Markdown + CSV) and its plots, from the files
under results/.

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
from pathlib import Path

from tsrec.baselines.table import PUBLISHED_LABEL, write_table
from tsrec.core.io import atomic_file, commit_group
from tsrec.eval import stats
from tsrec.eval.metrics import KS
from tsrec.reporting.ledger import ledger_lines, run_ledger
from tsrec.reporting.plots import (plot_baseline_curves, plot_hr_at_k, plot_rl, plot_valid_loss, plot_valid_ndcg,
                                   rl_variants)
from tsrec.reporting.readme import readme_block, write_readme
from tsrec.reporting.tables import (DELTA, MAIN, N_BOOT, PAIRED_K, Table, dataset_table, full_md, headline_md,
                                    is_profile_row, published_md, summary_lines)

@dataclasses.dataclass
class ReportConfig:
    results: str = "results"
    out: str = "results/tables.md"
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 3, 5, 10, 20])

    def validate(self) -> None:
        if not self.ks or any(k not in KS for k in self.ks):
            raise ValueError(f"ks must be a non-empty subset of {list(KS)}")
CURVE_VARIANTS = ("tsrec", "no_sainit", "no_tsalign", "sft")


@dataclasses.dataclass
class Matrix:
    """The ablation matrix as dvc.yaml reads it (``train.variants`` x ``train.seeds`` on ``train.datasets``): its
    share of the ledger's time is stated apart."""
    variants: list[str]
    seeds: list[int]
    datasets: list[str]

    def of(self, ds: str) -> tuple[list[str], list[int]] | None:
        return (self.variants, self.seeds) if ds in self.datasets and self.variants and self.seeds else None


def write_plots(results: Path, ds: str, table: Table, ks: list[int]) -> str:
    """The dataset's plots under ``results/<DS>/plots/``; returns the Markdown links to the optional ones."""
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
    return links


def write_dataset(results: Path, ds: str, ks: list[int], variants: list[str], seed: int = 42,
                  matrix: tuple[list[str], list[int]] | None = None) -> list[str]:
    """CSV + plots of one dataset; returns its Markdown section. ``matrix``: the ablation matrix's
    (train.variants, train.seeds), whose share of the ledger's time is stated apart."""
    table = dataset_table(results, ds, ks, variants, seed)
    shown = table.shown
    with atomic_file(results / ds / "table.csv") as fh:
        table.numeric.to_csv(fh, index=False)
    links = write_plots(results, ds, table, ks)
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


def intro() -> list[str]:
    """The head of ``report.out``: how to read every table under it."""
    return ["# Results tables", "",
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


def write_report(cfg: ReportConfig, datasets: list[str], variants: list[str], seed: int, matrix: Matrix,
                 readme: Path | None = None) -> tuple[list[str], Path, bool]:
    """Every dataset's CSVs and plots, ``cfg.out``, results/baselines.md and (``readme``) the README's result
    block, all or none (a full disk, a signal: they never disagree). Returns the Markdown lines of ``cfg.out``,
    the baselines table's path and whether the README block was written."""
    results, parts = Path(cfg.results), intro()
    with commit_group():
        for ds in datasets:
            parts += write_dataset(results, ds, cfg.ks, variants, seed, matrix.of(ds))
        with atomic_file(cfg.out) as fh:
            fh.write("\n".join(parts))
        baselines_md = write_table(results, datasets)
        written = bool(readme) and write_readme(readme, readme_block(results, datasets, variants, seed))
    return parts, baselines_md, written
