"""The baseline stage's protocol: Pop, Transition, SASRec, GRU4Rec, Caser, HSTU, TIGER on the same splits, full
ranking, TS-Rec's metrics (stage ``tsrec baseline``, ``tsrec.commands.baseline``).

RecBole's shape: one module per model family (``general``: Pop, Transition; ``sequential``: SASRec, HSTU,
GRU4Rec, Caser; ``generative``: TIGER), one class per model, one shared trainer/evaluator (``trainer``).

Protocol of one (dataset, model) run (``run_model``):
  1. Tuning on VALID only, with the first seed: every learned model tries the SAME grid over lr x dropout x
     width (``baselines.tuning``: same number of configs for every model; a model may replace a knob's values
     but not their count), each config trained to its valid plateau (epochs + patience, no wall clock); the
     config with the best SID-level valid NDCG@10 is chosen. Every config tried is recorded.
  2. The chosen config is trained once per seed (``baselines.seeds``; the first seed's tuning run is reused)
     and evaluated once on TEST at both granularities (``trainer`` doc).
  3. Files: ``results/<DS>/baselines/<model>/seed<N>.json`` per seed (test and valid metrics, epochs, timings,
     counts) and ``results/<DS>/baselines/<model>.json``: mean over seeds with the 95 % Student-t interval
     (``ci95``: half-widths). Deterministic models (Pop, Transition) run once (one seed file). Both are
     ``dvc metrics`` files holding numbers only (``tsrec.eval.metrics.write_metrics``); beside each, its run
     record ``<name>.run.json`` (``tsrec.eval.metrics.run_path``): command, params, chosen config, learning curve,
     stopping reason, every config tried (``read_with_run`` merges the two; the code version is dvc.lock's).
     Beside each seed file, ``seed<N>.ranks.parquet``: row, target, SID-level rank of every test row (paired tests in
     ``tsrec report``).
Resuming: every finished fit (a tuning config, a seed run) is saved to ``<work>/<DS>/baselines/<model>/fits/``
(``tsrec.baselines.fits.FitStore``), claimed for a fingerprint of the settings, input files and model code; a
rerun after a kill loads it instead of training again (same weights, so the same metrics). The folder is removed
once the results are written.
Metric keys everywhere: top-level ``HR@K`` / ``NDCG@K`` = SID level, ``item/HR@K`` / ``item/NDCG@K`` = item level
(``tsrec.eval.metrics``). ``tsrec baseline --table`` / ``tsrec report`` write ``results/baselines.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tsrec.baselines.config import DETERMINISTIC, LEARNED, BaselinesConfig, model_config
from tsrec.baselines.fits import FitStore
from tsrec.baselines.general import Pop, Transition
from tsrec.baselines.generative import TIGER
from tsrec.baselines.sequential import NETS, IDRecommender
from tsrec.baselines.trainer import VALID_METRIC, Recommender, SeqData, evaluate
from tsrec.core import pinning
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_file
from tsrec.data.layout import baseline_ranks, baseline_seed_file, baseline_summary
from tsrec.eval.metrics import ITEM_PREFIX, mean_ci, run_path, write_metrics

log = logging.getLogger(__name__)

CI_LEVEL = 0.95
# What the dvc metrics files hold (numbers a user compares): every metric key (``HR@K``, ``item/NDCG@K``,
# ``valid_NDCG@10``: keys with an ``@``) and these; every other key of a record goes to its run record.
SEED_NUMBERS = ("seed", "valid", "epochs", "best_epoch", "train_time_s", "test_eval_time_s",
                "valid_rows_early_stopping", "rows", "n_items", "n_sids")
SUMMARY_NUMBERS = ("n_runs", "ci95", "tuning_wall_s")


@dataclasses.dataclass
class RunSettings:
    """What one (dataset, model) run needs besides the ``baselines`` section, resolved by the command."""
    index_file: Path                    # the SID index in use for the dataset
    command: str                        # the equivalent command line, recorded
    repro: pinning.ReproConfig          # the ``repro`` section: each seed record's machine pinning
    params_file: str | None = None      # named in pinning errors
    max_rows: int | None = None         # smoke runs: the first N rows of every split
    seeds: list[int] | None = None      # checks: these seeds instead of baselines.seeds
    configs: list[int] | None = None    # checks: only these indices of the tuning grid
    fits: Path | None = None            # the fit cache folder (FitStore); None trains everything


def build(model: str, data: SeqData, cfg: BaselinesConfig, knobs: dict, seed: int) -> Recommender:
    model_cfg, train_cfg = model_config(cfg, model, knobs, f"baselines.tuning.{model}")
    if model == "pop":
        return Pop(data, seed)
    if model == "transition":
        return Transition(data, seed)
    if model in NETS:
        return IDRecommender(data, seed, model, model_cfg, train_cfg)
    return TIGER(data, seed, model_cfg, train_cfg)


def train_one(model: str, data: SeqData, cfg: BaselinesConfig, knobs: dict, seed: int, topk: int,
              store: FitStore | None = None):
    """Build and fit one config (or load its saved fit from ``store``); returns (recommender, record entry)."""
    t0 = time.monotonic()
    rec = build(model, data, cfg, knobs, seed)
    if store is not None and (entry := store.load(rec, knobs, seed)) is not None:
        return rec, entry
    fitted = rec.fit()
    valid = fitted.curve[fitted.best_epoch - 1] if fitted is not None else None
    score = fitted.best_valid if fitted is not None else rec.valid_eval(topk)[VALID_METRIC]
    entry = {"config": knobs, f"valid_{VALID_METRIC}": score, "valid_rows_scored": rec.valid_rows}
    if fitted is not None:
        entry.update(epochs=fitted.epochs, best_epoch=fitted.best_epoch, stopped=fitted.stopped,
                     train_time_s=round(fitted.train_time_s, 1), curve=fitted.curve)
        entry[f"valid_{ITEM_PREFIX}{VALID_METRIC}"] = valid[f"valid_{ITEM_PREFIX}{VALID_METRIC}"]
    entry["wall_s"] = round(time.monotonic() - t0, 1)
    if store is not None:
        store.save(rec, knobs, seed, entry)
    return rec, entry


def tune(ds: str, model: str, data: SeqData, cfg: BaselinesConfig, seed: int, configs: list[int] | None,
         store: FitStore | None) -> tuple[tuple[Recommender, dict], dict]:
    """Step 1: every config of the grid (or ``configs``, indices into it) trained with ``seed`` on valid;
    returns ((recommender, entry) of the best, the tuning record)."""
    grid = cfg.tuning.grid(model)
    chosen_idx = list(range(len(grid))) if configs is None else configs
    bad = [i for i in chosen_idx if not 0 <= i < len(grid)]
    if bad:
        raise ParamError(f"config index(es) {bad} outside the grid of {len(grid)} configs", field="--config")
    tried, best = [], None
    for i in chosen_idx:
        rec, entry = train_one(model, data, cfg, grid[i], seed, cfg.topk, store)
        entry = {"index": i, **entry}
        log.info("%s %s config %d %s: valid %s=%.5f (%s)", ds, model, i, grid[i], VALID_METRIC,
                 entry[f"valid_{VALID_METRIC}"], entry.get("stopped", "no training"))
        tried.append(entry)
        if best is None or entry[f"valid_{VALID_METRIC}"] > best[1][f"valid_{VALID_METRIC}"]:
            best = (rec, entry)
    tuning = {"seed": seed, "rule": f"best valid {VALID_METRIC} (SID level)", "grid_size": len(grid),
              "restricted_to": configs, "chosen": best[1]["index"], "configs": tried}
    return best, tuning


def run_model(cfg: BaselinesConfig, ds: str, model: str,
              run: RunSettings) -> tuple[list[dict], dict, dict[int, pd.DataFrame]]:
    """Tune on valid with the first seed, train the chosen config per seed, test each once.

    Returns (one record per seed, the summary over seeds, seed -> test row ranks). ``run.seeds`` /
    ``run.configs`` (indices into the grid) restrict a run for smoke tests and checks; both are recorded and
    flagged in the table. ``run.fits``: the folder where finished fits are saved and reloaded (``FitStore``).
    """
    seeds, configs = list(run.seeds or cfg.seeds), run.configs
    if model in DETERMINISTIC:
        seeds, configs = seeds[:1], None  # no randomness, no knobs: one run stands for every seed
    data_dir = Path(cfg.data) / ds
    if not (data_dir / "train.parquet").is_file():
        raise TsrecError(f"no canonical data for {ds} (run `tsrec data --dataset {ds}`)", file=data_dir)
    data = SeqData(data_dir, cfg.max_len, run.max_rows, index_file=run.index_file)
    store = FitStore(run.fits, data, model, cfg, run.max_rows) if run.fits is not None else None
    best, tuning = tune(ds, model, data, cfg, seeds[0], configs, store)
    knobs = best[1]["config"]
    records, row_ranks = [], {}
    for seed in seeds:
        rec, entry = best if seed == seeds[0] else train_one(model, data, cfg, knobs, seed, cfg.topk, store)
        record, row_ranks[seed] = seed_record(cfg, ds, data, model, rec, entry, seed, tuning, run)
        records.append(record)
    return records, summarise(records, run.command), row_ranks


def seed_record(cfg: BaselinesConfig, ds: str, data: SeqData, model: str, rec: Recommender, entry: dict,
                seed: int, tuning: dict, run: RunSettings) -> tuple[dict, pd.DataFrame]:
    """Step 2 for one seed: valid (all rows) and test evaluation of the trained ``rec``; (record, test ranks)."""
    knobs = entry["config"]
    model_cfg, train_cfg = model_config(cfg, model, knobs, f"baselines.tuning.{model}")
    card = json.loads((data.dir / "card.json").read_text()) if (data.dir / "card.json").is_file() else {}
    valid_metrics, _ = evaluate(rec, *data.rows("valid"), cfg.topk, rec.eval_batch)  # all rows, for the record
    t0 = time.monotonic()
    test_metrics, test_ranks = evaluate(rec, *data.rows("test"), cfg.topk, rec.eval_batch)
    test_df = data.splits["test"]
    ranks = pd.DataFrame({"row": test_df.index.to_numpy(), "target": test_df["target"].to_numpy(),
                          "rank": test_ranks["sid"], "item_rank": test_ranks["item"]})
    return {
        "model": model, "dataset": ds, "split": "test", "seed": seed, "protocol": card.get("protocol"),
        **test_metrics,
        "granularity": {"HR@K, NDCG@K": "SID level: a ranked SID is a hit for every item sharing it "
                                        "(authors' protocol)",
                        f"{ITEM_PREFIX}HR@K, {ITEM_PREFIX}NDCG@K": "item level: SIDs expand to their items by "
                        "train popularity, then item id" if rec.unit == "sid" else
                        "item level: the model's own item ranking"},
        "native_unit": rec.unit,
        "valid": valid_metrics,
        "config": knobs,
        "epochs": entry.get("epochs"), "best_epoch": entry.get("best_epoch"), "stopped": entry.get("stopped"),
        "train_time_s": entry.get("train_time_s", 0.0), "curve": entry.get("curve"),
        "valid_rows_early_stopping": entry["valid_rows_scored"],
        "test_eval_time_s": round(time.monotonic() - t0, 1),
        "tuning": tuning,
        "command": run.command,
        "params": {"model": dataclasses.asdict(model_cfg) if model_cfg is not None else {},
                   "train": dataclasses.asdict(train_cfg) if model in LEARNED else {},
                   "max_len": cfg.max_len, "topk": cfg.topk},
        "loss": None if model in DETERMINISTIC else
        ("seq2seq cross-entropy over SID tokens" if model == "tiger"
         else "full softmax cross-entropy over all items"),
        "ranking": (f"constrained beam search over the SID trie (tsrec.lm.decoding), beams = {rec.cfg.beams}"
                    if model == "tiger" else "full ranking over all items"),
        "rows": {"train_pairs": len(data.pairs), "valid": len(data.splits["valid"]),
                 "test": len(test_ranks["sid"])},
        "n_items": data.n_items, "n_sids": len(data.gran.sid_items),
        "sid_index": str(data.index_file), "max_rows": run.max_rows,
        "torch_threads": torch.get_num_threads(),
        "machine": pinning.record(run.repro, file=run.params_file),
    }, ranks


def summarise(records: list[dict], command: str) -> dict:
    """Mean over the per-seed records and the 95 % t-interval half-width of every metric (``ci95``)."""
    first = records[0]
    keys = [k for k in first if "@" in k and isinstance(first[k], float)]
    out: dict[str, Any] = {"model": first["model"], "dataset": first["dataset"], "split": "test",
                           "seeds": [r["seed"] for r in records], "n_runs": len(records),
                           "deterministic": first["model"] in DETERMINISTIC}
    ci = {}
    for k in keys:
        out[k], ci[k] = mean_ci([r[k] for r in records], CI_LEVEL)
    for k in (VALID_METRIC, ITEM_PREFIX + VALID_METRIC):
        out[f"valid_{k}"], ci[f"valid_{k}"] = mean_ci([r["valid"][k] for r in records], CI_LEVEL)
    out.update({
        "ci95": ci,
        "ci": "mean over seeds +- ci95: half-width of the two-sided 95 % Student-t interval (n - 1 dof); "
              "null with one run",
        "granularity": first["granularity"], "native_unit": first["native_unit"],
        "config": first["config"], "tuning_restricted_to": first["tuning"]["restricted_to"],
        "epochs": [r["epochs"] for r in records], "stopped": [r["stopped"] for r in records],
        "train_time_s": [r["train_time_s"] for r in records],
        "tuning_wall_s": round(sum(e["wall_s"] for e in first["tuning"]["configs"]), 1),
        "max_rows": first["max_rows"], "command": command,
    })
    return out


def split_record(record: dict, numbers: tuple[str, ...]) -> tuple[dict, dict]:
    """(metrics file, run record) of a seed record or summary: the metric keys (with an ``@``) and ``numbers``
    in the first, in record order; everything else (command, params, config, tuning, curve, strings) in the
    second."""
    metrics = {k: v for k, v in record.items() if "@" in k or k in numbers}
    return metrics, {k: v for k, v in record.items() if k not in metrics}


def write_results(out: Path, ds: str, model: str, records: list[dict], summary: dict,
                  row_ranks: dict[int, pd.DataFrame] | None = None) -> Path:
    """Seed files, their run records and row ranks under ``<out>/<ds>/baselines/<model>/`` (stale ones removed),
    then the summary and its run record."""
    folder = out / ds / "baselines" / model
    seed_files = [baseline_seed_file(out, ds, model, r["seed"]) for r in records]
    keep = {p.name for f, r in zip(seed_files, records)
            for p in (f, run_path(f), baseline_ranks(out, ds, model, r["seed"]))}
    if folder.is_dir():
        for stale in [*folder.glob("seed*.json"), *folder.glob("seed*.ranks.parquet")]:
            if stale.name not in keep:
                stale.unlink()
    for f, r in zip(seed_files, records):
        write_metrics(f, *split_record(r, SEED_NUMBERS))
        if row_ranks and r["seed"] in row_ranks:
            with atomic_file(baseline_ranks(out, ds, model, r["seed"]), "wb") as fh:
                row_ranks[r["seed"]].to_parquet(fh, index=False)
    summary["runs"] = [str(f) for f in seed_files]
    path = baseline_summary(out, ds, model)
    write_metrics(path, *split_record(summary, SUMMARY_NUMBERS))
    return path


