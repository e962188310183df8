"""baseline: Pop, SASRec, GRU4Rec, Caser, HSTU and TIGER on the same splits, full ranking and metrics as TS-Rec.

RecBole's shape: one module per model family (``general``: Pop; ``sequential``: SASRec, HSTU, GRU4Rec, Caser;
``generative``: TIGER), one class per model, one shared trainer/evaluator (``trainer``). Each model gets the
same tuning budget (``baselines.tuning``: a list of override dicts per model, tried on VALID; the best by
valid NDCG@10 is evaluated once on TEST). Output: ``results/<DS>/baselines/<model>.json``;
``tsrec baseline --table`` writes ``results/baselines.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from tsrec.baselines.generative import TIGER, TigerConfig
from tsrec.baselines.general import Pop
from tsrec.baselines.sequential import NETS, CaserConfig, GRU4RecConfig, HSTUConfig, IDRecommender, SASRecConfig
from tsrec.baselines.trainer import VALID_METRIC, Recommender, SeqData, TrainConfig, evaluate
from tsrec.config import from_dict, section
from tsrec.codebook import index_path
from tsrec.data import load_index
from tsrec.errors import ParamError, TsrecError
from tsrec.io import write_json

log = logging.getLogger(__name__)

MODELS = ("pop", "sasrec", "gru4rec", "caser", "tiger", "hstu")
LEARNED = MODELS[1:]


@dataclasses.dataclass
class BaselinesConfig:
    models: list[str] = dataclasses.field(default_factory=lambda: list(MODELS))
    data: str = "data"
    out: str = "results"
    max_len: int = 10  # history items kept (the splits hold <= 10)
    topk: int = 20  # ranked list length scored (metrics @1..@20)
    threads: int = 2
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
    gru4rec: GRU4RecConfig = dataclasses.field(default_factory=GRU4RecConfig)
    caser: CaserConfig = dataclasses.field(default_factory=CaserConfig)
    hstu: HSTUConfig = dataclasses.field(default_factory=HSTUConfig)
    tiger: TigerConfig = dataclasses.field(default_factory=TigerConfig)
    # model -> list of override dicts (keys of the model's section or of train); same length for every model
    tuning: dict[str, list] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS)) + sorted(set(self.tuning) - set(LEARNED))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {list(MODELS)}")
        if self.max_len < 1 or self.topk < 1 or self.threads < 1:
            raise ValueError("max_len, topk and threads must be >= 1")
        if self.tiger.beams < self.topk:
            raise ValueError(f"tiger.beams ({self.tiger.beams}) must be >= topk ({self.topk})")
        sizes = {m: len(self.tuning.get(m) or [{}]) for m in LEARNED}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"tuning budget must be identical for every learned model, got {sizes}")
        for m in LEARNED:
            for i, over in enumerate(self.tuning.get(m) or [{}]):
                model_config(self, m, over, f"baselines.tuning.{m}[{i}]")  # raises on bad keys / values


def model_config(cfg: BaselinesConfig, model: str, override: dict, where: str) -> tuple[Any, TrainConfig]:
    """(model section, train config) with ``override`` applied; keys of either may be overridden."""
    if not isinstance(override, dict):
        raise ParamError(f"must be a mapping, got {override!r}", field=where)
    section_obj = getattr(cfg, model, None)
    if section_obj is None:  # pop has no parameters
        if override:
            raise ParamError("pop takes no parameters", field=where)
        return None, cfg.train
    own = {f.name for f in dataclasses.fields(section_obj)} - {"train"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(override) - own - train_keys)
    if bad:
        raise ParamError(f"unknown key(s) {bad}; expected some of {sorted(own | train_keys)}", field=where)
    raw = {k: v for k, v in dataclasses.asdict(section_obj).items() if k != "train"}
    raw.update({k: v for k, v in override.items() if k in own})
    model_cfg = from_dict(type(section_obj), raw, where)
    train_raw = {**dataclasses.asdict(cfg.train), **section_obj.train,
                 **{k: v for k, v in override.items() if k in train_keys}}
    return model_cfg, from_dict(TrainConfig, train_raw, f"{where}.train")


def build(model: str, data: SeqData, cfg: BaselinesConfig, override: dict, seed: int,
          index: dict[int, list[str]] | None = None) -> Recommender:
    model_cfg, train_cfg = model_config(cfg, model, override, f"baselines.tuning.{model}")
    if model == "pop":
        return Pop(data, seed)
    if model in NETS:
        return IDRecommender(data, seed, model, model_cfg, train_cfg)
    if index is None:
        raise TsrecError("TIGER needs a SID index")
    return TIGER(data, seed, index, model_cfg, train_cfg)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_model(cfg: BaselinesConfig, params: dict, ds: str, model: str, *, command: str,
              max_rows: int | None = None) -> dict:
    """Tune on valid (identical budget per model), evaluate the best config once on test; return the record."""
    seed = int(params.get("seed", 42))
    commit = _git_commit()  # the code that runs (taken before training, not after)
    data_dir = Path(cfg.data) / ds
    if not (data_dir / "train.parquet").is_file():
        raise TsrecError(f"no canonical data for {ds} (run `tsrec data --dataset {ds}`)", file=data_dir)
    data = SeqData(data_dir, cfg.max_len, max_rows)
    index_file = Path(index_path(params, ds)) if model == "tiger" else None
    index = load_index(index_file) if index_file else None
    overrides = [{}] if model == "pop" else (cfg.tuning.get(model) or [{}])
    tried, best = [], None
    for i, over in enumerate(overrides):
        t0 = time.monotonic()
        rec = build(model, data, cfg, over, seed, index)
        fitted = rec.fit()
        score = fitted.best_valid if fitted is not None else rec.valid_score(cfg.topk)
        entry = {"config": i, "override": over, f"valid_{VALID_METRIC}": score,
                 "valid_rows_scored": getattr(getattr(rec, "cfg", None), "valid_rows", 0) or len(data.splits["valid"]),
                 "wall_s": round(time.monotonic() - t0, 1)}
        if fitted is not None:
            entry.update(epochs=fitted.epochs, best_epoch=fitted.best_epoch, stopped=fitted.stopped,
                         train_time_s=round(fitted.train_time_s, 1), curve=fitted.curve)
        log.info("%s %s config %d %s: valid %s=%.5f", ds, model, i, over, VALID_METRIC, score)
        tried.append(entry)
        if best is None or score > best[1][f"valid_{VALID_METRIC}"]:
            best = (rec, entry)
    rec, entry = best
    valid_metrics, _ = evaluate(rec.recommend, *_keyed(rec, data, "valid"), cfg.topk)  # all rows, for the record
    t0 = time.monotonic()
    test_metrics, test_ranks = evaluate(rec.recommend, *_keyed(rec, data, "test"), cfg.topk)
    eval_s = time.monotonic() - t0
    model_cfg, train_cfg = model_config(cfg, model, entry["override"], f"baselines.tuning.{model}")
    card = json.loads((data_dir / "card.json").read_text()) if (data_dir / "card.json").is_file() else {}
    return {
        "model": model,
        "dataset": ds,
        "split": "test",
        "protocol": card.get("protocol"),
        "metrics": test_metrics,
        "valid_metrics": valid_metrics,
        f"best_valid_{VALID_METRIC}": valid_metrics[VALID_METRIC],
        "epochs": entry.get("epochs"),
        "best_epoch": entry.get("best_epoch"),
        "train_time_s": entry.get("train_time_s", 0.0),
        "test_eval_time_s": round(eval_s, 1),
        "tuning_wall_s": round(sum(e["wall_s"] for e in tried), 1),
        "command": command,
        "seed": seed,
        "params": {"model": dataclasses.asdict(model_cfg) if model_cfg is not None else {},
                   "train": dataclasses.asdict(train_cfg) if model != "pop" else {},
                   "override": entry["override"], "max_len": cfg.max_len, "topk": cfg.topk},
        "tuning": tried,
        "loss": None if model == "pop" else
        ("seq2seq cross-entropy over SID tokens" if model == "tiger" else "full softmax cross-entropy over all items"),
        "ranking": ("constrained beam search over the SID trie, beams = "
                    f"{rec.cfg.beams}, ranked on SIDs" if model == "tiger" else "full ranking over all items"),
        "rows": {"train_pairs": len(data.pairs), "valid": len(data.splits["valid"]), "test": len(test_ranks)},
        "n_items": data.n_items,
        "sid_index": str(index_file) if index_file else None,
        "max_rows": max_rows,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
    }


def _keyed(rec: Recommender, data: SeqData, split: str) -> tuple[list[list[int]], list]:
    hist, targets = data.rows(split)
    return hist, rec.keys(targets)


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--model", action="append", choices=MODELS, help="model(s) to run (default: baselines.models)")
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--out", help="results root (default: baselines.out)")
    p.add_argument("--max-rows", type=int, help="smoke runs only: keep the first N rows of every split")
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
            if args.max_rows:
                command += f" --max-rows {args.max_rows}"
            record = run_model(cfg, params, ds, model, command=command, max_rows=args.max_rows)
            path = out / ds / "baselines" / f"{model}.json"
            write_json(path, record)
            m = record["metrics"]
            print(f"{ds} {model}: test HR@10={m['HR@10']:.4f} NDCG@10={m['NDCG@10']:.4f} "
                  f"(valid NDCG@10={record[f'best_valid_{VALID_METRIC}']:.4f}, "
                  f"tuning {record['tuning_wall_s']:.0f} s) -> {path}")
