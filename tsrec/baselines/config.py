"""The ``baselines`` section: which models, seeds and folders, each model's own section, the shared train
settings and the tuning grid (``TuningConfig``); ``model_config`` applies one grid point (lr, dropout, width)
to a model's section and train settings."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from tsrec.baselines.generative import TigerConfig
from tsrec.baselines.names import DETERMINISTIC, KNOBS, LEARNED, MODELS, check_models
from tsrec.baselines.sequential import CaserConfig, GRU4RecConfig, HSTUConfig, SASRecConfig
from tsrec.baselines.trainer import FitConfig
from tsrec.core.config import from_dict
from tsrec.core.errors import ParamError

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
    """The ``baselines`` section (stage baseline; D3's assistant reads its sasrec, train, max_len, out, seeds)."""

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
        check_models(self.models, MODELS)
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
