"""baseline: Pop, Transition, SASRec, GRU4Rec, Caser, HSTU, TIGER on the same splits; full ranking, TS-Rec's metrics.

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
(``FitStore``), claimed for a fingerprint of the settings, input files and model code; a rerun after a kill loads
it instead of training again (same weights, so the same metrics). The folder is removed once the results are
written.
Metric keys everywhere: top-level ``HR@K`` / ``NDCG@K`` = SID level, ``item/HR@K`` / ``item/NDCG@K`` = item level
(``tsrec.eval.metrics``). ``tsrec baseline --table`` / ``tsrec report`` write ``results/baselines.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tsrec.core import pinning
from tsrec.baselines.general import Pop, Transition
from tsrec.baselines.generative import TIGER, TigerConfig
from tsrec.baselines.sequential import NETS, CaserConfig, GRU4RecConfig, HSTUConfig, IDRecommender, SASRecConfig
from tsrec.baselines.trainer import VALID_METRIC, FitConfig, Recommender, SeqData, evaluate
from tsrec.core.config import from_dict, section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_file, claim_checkpoints, sha256_file, sha256_json
from tsrec.data.layout import baseline_fits, baseline_ranks, baseline_seed_file, baseline_summary, index_path
from tsrec.eval.metrics import ITEM_PREFIX, mean_ci, run_path, write_metrics

log = logging.getLogger(__name__)

MODELS = ("pop", "transition", "sasrec", "gru4rec", "caser", "hstu", "tiger")
DETERMINISTIC = ("pop", "transition")
LEARNED = tuple(m for m in MODELS if m not in DETERMINISTIC)
KNOBS = ("lr", "dropout", "width")  # the tuned knobs, in grid order (lr outermost)
CI_LEVEL = 0.95
# What the dvc metrics files hold (numbers a user compares): every metric key (``HR@K``, ``item/NDCG@K``,
# ``valid_NDCG@10``: keys with an ``@``) and these; every other key of a record goes to its run record.
SEED_NUMBERS = ("seed", "valid", "epochs", "best_epoch", "train_time_s", "test_eval_time_s",
                "valid_rows_early_stopping", "rows", "n_items", "n_sids")
SUMMARY_NUMBERS = ("n_runs", "ci95", "tuning_wall_s")


@dataclasses.dataclass
class TuningConfig:
    """The grid every learned model tries on valid: lr x dropout x width (product, in ``KNOBS`` order).

    ``width`` is the model width: ``hidden`` of the ID models, ``d_model`` of TIGER (with d_ff = ff_ratio *
    d_model). ``per_model`` may replace a knob's values for one model (e.g. TIGER's learning rates), with the
    same number of values, so every model tries the same number of configs.
    """

    lr: list[float] = dataclasses.field(default_factory=lambda: [0.001, 0.003])
    dropout: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3])
    width: list[int] = dataclasses.field(default_factory=lambda: [64, 128])
    per_model: dict[str, dict] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        for knob in KNOBS:
            if not getattr(self, knob):
                raise ValueError(f"{knob} needs at least one value")
        for model, over in self.per_model.items():
            if model not in LEARNED:
                raise ValueError(f"per_model.{model}: not a learned model; known: {list(LEARNED)}")
            if not isinstance(over, dict) or set(over) - set(KNOBS):
                raise ValueError(f"per_model.{model}: expected a mapping of some of {list(KNOBS)}, got {over!r}")
            for knob, values in over.items():
                if not isinstance(values, list) or len(values) != len(getattr(self, knob)):
                    raise ValueError(f"per_model.{model}.{knob}: needs {len(getattr(self, knob))} values (the "
                                     f"same number as tuning.{knob}, so every model tries as many configs)")

    def grid(self, model: str) -> list[dict]:
        """The configs (knob -> value) ``model`` tries, in a fixed order; [{}] for deterministic models."""
        if model in DETERMINISTIC:
            return [{}]
        values = {k: list(getattr(self, k)) for k in KNOBS} | dict(self.per_model.get(model, {}))
        return [dict(zip(KNOBS, combo)) for combo in itertools.product(*(values[k] for k in KNOBS))]


@dataclasses.dataclass
class BaselinesConfig:
    models: list[str] = dataclasses.field(default_factory=lambda: list(MODELS))
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42, 43, 44])
    data: str = "data"
    out: str = "results"
    work: str = "artifacts"  # finished fits of a running stage (resume), under <work>/<DS>/baselines/<model>/fits
    max_len: int = 10  # history items kept (the splits hold <= 10)
    topk: int = 20  # ranked list length scored (metrics @1..@20)
    threads: int = 1
    train: FitConfig = dataclasses.field(default_factory=FitConfig)
    sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
    gru4rec: GRU4RecConfig = dataclasses.field(default_factory=GRU4RecConfig)
    caser: CaserConfig = dataclasses.field(default_factory=CaserConfig)
    hstu: HSTUConfig = dataclasses.field(default_factory=HSTUConfig)
    tiger: TigerConfig = dataclasses.field(default_factory=TigerConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)

    def validate(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {list(MODELS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.max_len < 1 or self.topk < 1 or self.threads < 1:
            raise ValueError("max_len, topk and threads must be >= 1")
        if self.tiger.beams < self.topk:
            raise ValueError(f"tiger.beams ({self.tiger.beams}) must be >= topk ({self.topk})")
        for m in LEARNED:
            for i, knobs in enumerate(self.tuning.grid(m)):
                model_config(self, m, knobs, f"baselines.tuning (config {i} of {m}: {knobs})")  # raises on bad values


def model_config(cfg: BaselinesConfig, model: str, knobs: dict, where: str) -> tuple[Any, FitConfig]:
    """(model section, train config) of ``model`` with the tuning ``knobs`` (lr, dropout, width) applied."""
    section_obj = getattr(cfg, model, None)
    if section_obj is None:  # pop, transition: no parameters
        if knobs:
            raise ParamError(f"{model} takes no parameters", field=where)
        return None, cfg.train
    bad = sorted(set(knobs) - set(KNOBS))
    if bad:
        raise ParamError(f"unknown knob(s) {bad}; expected some of {list(KNOBS)}", field=where)
    raw = {k: v for k, v in dataclasses.asdict(section_obj).items() if k != "train"}
    if "dropout" in knobs:
        raw["dropout"] = knobs["dropout"]
    if "width" in knobs:
        if model == "tiger":
            raw["d_model"], raw["d_ff"] = knobs["width"], knobs["width"] * section_obj.ff_ratio
        else:
            raw["hidden"] = knobs["width"]
    model_cfg = from_dict(type(section_obj), raw, where)
    train_raw = {**dataclasses.asdict(cfg.train), **section_obj.train}
    if "lr" in knobs:
        train_raw["lr"] = knobs["lr"]
    return model_cfg, from_dict(FitConfig, train_raw, f"{where}.train")


def build(model: str, data: SeqData, cfg: BaselinesConfig, knobs: dict, seed: int) -> Recommender:
    model_cfg, train_cfg = model_config(cfg, model, knobs, f"baselines.tuning.{model}")
    if model == "pop":
        return Pop(data, seed)
    if model == "transition":
        return Transition(data, seed)
    if model in NETS:
        return IDRecommender(data, seed, model, model_cfg, train_cfg)
    return TIGER(data, seed, model_cfg, train_cfg)


# the files that define how a model trains and scores: a saved fit is reused only while they are unchanged
MODEL_CODE = ("baselines/trainer.py", "baselines/sequential.py", "baselines/generative.py",
              "baselines/general.py", "lm/decoding.py")
SPLIT_FILES = ("items", "train", "valid", "test")


class FitStore:
    """Finished fits of one (dataset, model) stage, so that a killed stage resumes where it stopped.

    The folder is claimed for the stage's fingerprint (``tsrec.core.io.claim_checkpoints``: the model, its own and the
    train section, max_len, topk, max_rows, the sha256 of the split files, SID index and model code); fits of
    another fingerprint are removed. One file per fit, keyed by its knobs and seed: the record entry and the
    trained weights, written atomically.
    """

    def __init__(self, folder: Path, data: SeqData, model: str, cfg: "BaselinesConfig", max_rows: int | None):
        self.folder = folder
        code_root = Path(__file__).parents[1]  # tsrec/
        claim_checkpoints(folder, sha256_json({
            "model": model, "section": dataclasses.asdict(getattr(cfg, model)) if hasattr(cfg, model) else None,
            "train": dataclasses.asdict(cfg.train), "max_len": cfg.max_len, "topk": cfg.topk, "max_rows": max_rows,
            **{name: sha256_file(data.dir / f"{name}.parquet") for name in SPLIT_FILES},
            "sid_index": sha256_file(data.index_file),
            "code": {name: sha256_file(code_root / name) for name in MODEL_CODE}}))

    def _path(self, knobs: dict, seed: int) -> Path:
        return self.folder / f"{sha256_json({'knobs': knobs, 'seed': seed})[:20]}.pt"

    def load(self, rec: Recommender, knobs: dict, seed: int) -> dict | None:
        """The saved entry of this fit, with its weights loaded into ``rec``; None if it was not saved."""
        path = self._path(knobs, seed)
        if rec.module is None or not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        rec.module.load_state_dict(saved["state"])
        rec.module.eval()
        log.info("%s seed %d: fit resumed from %s", knobs, seed, path)
        return json.loads(saved["entry"])

    def save(self, rec: Recommender, knobs: dict, seed: int, entry: dict) -> None:
        if rec.module is not None:
            with atomic_file(self._path(knobs, seed), "wb") as fh:
                torch.save({"entry": json.dumps(entry), "state": rec.module.state_dict()}, fh)


def _train(model: str, data: SeqData, cfg: BaselinesConfig, knobs: dict, seed: int, topk: int,
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


def run_model(cfg: BaselinesConfig, params: dict, ds: str, model: str, *, command: str,
              max_rows: int | None = None, seeds: list[int] | None = None,
              configs: list[int] | None = None,
              fits: Path | None = None) -> tuple[list[dict], dict, dict[int, pd.DataFrame]]:
    """Tune on valid with the first seed, train the chosen config per seed, test each once.

    Returns (one record per seed, the summary over seeds, seed -> test row ranks). ``seeds`` / ``configs`` (indices into the grid)
    restrict a run for smoke tests and checks; both are recorded and flagged in the table.
    ``fits``: the folder where finished fits are saved and reloaded (``FitStore``); None trains everything.
    """
    seeds = list(seeds or cfg.seeds)
    if model in DETERMINISTIC:
        seeds, configs = seeds[:1], None  # no randomness, no knobs: one run stands for every seed
    data_dir = Path(cfg.data) / ds
    if not (data_dir / "train.parquet").is_file():
        raise TsrecError(f"no canonical data for {ds} (run `tsrec data --dataset {ds}`)", file=data_dir)
    data = SeqData(data_dir, cfg.max_len, max_rows, index_file=index_path(params, ds))
    store = FitStore(fits, data, model, cfg, max_rows) if fits is not None else None
    grid = cfg.tuning.grid(model)
    chosen_idx = list(range(len(grid))) if configs is None else configs
    bad = [i for i in chosen_idx if not 0 <= i < len(grid)]
    if bad:
        raise ParamError(f"config index(es) {bad} outside the grid of {len(grid)} configs", field="--config")
    tried, best = [], None
    for i in chosen_idx:
        rec, entry = _train(model, data, cfg, grid[i], seeds[0], cfg.topk, store)
        entry = {"index": i, **entry}
        log.info("%s %s config %d %s: valid %s=%.5f (%s)", ds, model, i, grid[i], VALID_METRIC,
                 entry[f"valid_{VALID_METRIC}"], entry.get("stopped", "no training"))
        tried.append(entry)
        if best is None or entry[f"valid_{VALID_METRIC}"] > best[1][f"valid_{VALID_METRIC}"]:
            best = (rec, entry)
    knobs = best[1]["config"]
    model_cfg, train_cfg = model_config(cfg, model, knobs, f"baselines.tuning.{model}")
    card = json.loads((data_dir / "card.json").read_text()) if (data_dir / "card.json").is_file() else {}
    tuning = {"seed": seeds[0], "rule": f"best valid {VALID_METRIC} (SID level)", "grid_size": len(grid),
              "restricted_to": configs, "chosen": best[1]["index"], "configs": tried}
    records, row_ranks = [], {}
    for seed in seeds:
        rec, entry = best if seed == seeds[0] else _train(model, data, cfg, knobs, seed, cfg.topk, store)
        valid_metrics, _ = evaluate(rec, *data.rows("valid"), cfg.topk, rec.eval_batch)  # all rows, for the record
        t0 = time.monotonic()
        test_metrics, test_ranks = evaluate(rec, *data.rows("test"), cfg.topk, rec.eval_batch)
        test_df = data.splits["test"]
        row_ranks[seed] = pd.DataFrame({"row": test_df.index.to_numpy(), "target": test_df["target"].to_numpy(),
                                        "rank": test_ranks["sid"], "item_rank": test_ranks["item"]})
        records.append({
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
            "command": command,
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
            "sid_index": str(data.index_file), "max_rows": max_rows,
            "torch_threads": torch.get_num_threads(),
            "machine": pinning.record(pinning.config(params), file=params.get("_path")),
        })
    return records, summarise(records, command), row_ranks


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


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--model", action="append", choices=MODELS, help="model(s) to run (default: baselines.models)")
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--out", help="results root (default: baselines.out)")
    p.add_argument("--max-rows", type=int, help="smoke runs only: keep the first N rows of every split")
    p.add_argument("--seed", action="append", type=int, help="checks only: these seeds instead of baselines.seeds")
    p.add_argument("--config", action="append", type=int,
                   help="checks only: try only these configs of the tuning grid (0-based, grid order)")
    p.add_argument("--table", action="store_true", help="only (re)write results/baselines.md from the JSONs")


def run(args, params) -> None:
    cfg = section(params, "baselines", BaselinesConfig)
    out = Path(args.out or cfg.out)
    datasets = args.dataset or (params.get("data") or {}).get("datasets") or []
    if args.table:
        from tsrec.baselines.table import write_table

        path = write_table(out, datasets)
        print(path.read_text(encoding="utf-8"))
        return
    torch.set_num_threads(cfg.threads)
    for ds in datasets:
        for model in args.model or cfg.models:
            command = f"tsrec baseline --model {model} --dataset {ds}"
            for flag, values in (("--max-rows", [args.max_rows] if args.max_rows else []),
                                 ("--seed", args.seed or []), ("--config", args.config or [])):
                command += "".join(f" {flag} {v}" for v in values)
            fits = baseline_fits(cfg.work, ds, model)
            records, summary, row_ranks = run_model(cfg, params, ds, model, command=command, max_rows=args.max_rows,
                                                    seeds=args.seed, configs=args.config, fits=fits)
            path = write_results(out, ds, model, records, summary, row_ranks)
            shutil.rmtree(fits, ignore_errors=True)  # the stage is done: nothing left to resume
            ci = summary["ci95"]
            fmt = lambda k: f"{summary[k]:.4f}" + (f" +- {ci[k]:.4f}" if ci.get(k) is not None else "")  # noqa: E731
            print(f"{ds} {model}: test NDCG@10={fmt('NDCG@10')} item/NDCG@10={fmt('item/NDCG@10')} "
                  f"over {summary['n_runs']} run(s) (valid NDCG@10={summary['valid_NDCG@10']:.4f}, "
                  f"tuning {summary['tuning_wall_s']:.0f} s) -> {path}")
