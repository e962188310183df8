"""params.yaml is the single source of truth: every config field is in it, and the code defaults (which
library callers and tests get) equal it, so nothing a stage reads can drift from the file."""

import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

from tsrec.core.config import SECTIONS, load_params
from tsrec.core.errors import ParamError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())

# section -> its typed config; the sections without one hold no defaults (seed: int, variants: overrides,
# repro: the make repro list)
CONFIGS = {
    "data": "tsrec.data.datasets:DataConfig", "raw": "tsrec.data.raw:RawConfig", "report": "tsrec.reporting.document:ReportConfig",
    "embed": "tsrec.semantics.encoder:EmbedConfig", "backbone": "tsrec.lm.llm:BackboneConfig",
    "sainit": "tsrec.model.sainit:SAInitConfig", "tasks": "tsrec.model.tasks:TasksConfig", "train": "tsrec.model.runs:TrainConfig",
    "baselines": "tsrec.baselines.config:BaselinesConfig", "sweep": "tsrec.tuning.config:SweepConfig",
    "evaluate": "tsrec.model.scoring:EvaluateConfig", "codebook": "tsrec.data.sids:CodebookConfig",
    "keywords": "tsrec.semantics.keyword_cache:KeywordsConfig", "rl": "tsrec.model.grpo:RLConfig",
    "llm_baselines": "tsrec.baselines.llm_config:LLMBaselinesConfig",
    "repro": "tsrec.core.pinning:ReproConfig",
}
UNTYPED = {"seed", "variants"}


def config_class(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def drift(code, params, where: str) -> list[str]:
    """Where the code default ``code`` and the params value disagree, or params lacks a key the code reads."""
    if isinstance(code, dict):
        if not isinstance(params, dict):
            return [f"{where}: params has {params!r}, code reads a mapping"]
        out = []
        for key, value in code.items():
            if key not in params:
                out.append(f"{where}.{key}: read by the code, missing from params.yaml")
            else:
                out += drift(value, params[key], f"{where}.{key}")
        return out
    if isinstance(code, (list, tuple)) and isinstance(params, (list, tuple)):
        code, params = list(code), list(params)
    return [] if code == params else [f"{where}: code default {code!r} != params.yaml {params!r}"]


def test_every_section_is_typed_or_listed():
    assert set(SECTIONS) == set(CONFIGS) | UNTYPED


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_code_defaults_equal_params_yaml(name):
    defaults = dataclasses.asdict(config_class(CONFIGS[name])())
    assert drift(defaults, PARAMS.get(name), name) == []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_params_yaml_section_parses_with_no_unknown_key(name):
    from tsrec.core.config import from_dict

    from_dict(config_class(CONFIGS[name]), PARAMS[name], name, "params.yaml")


def test_drift_is_detected():
    assert drift({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "s") == ["s.b.c: code default 2 != params.yaml 3"]
    assert drift({"a": 1}, {}, "s") == ["s.a: read by the code, missing from params.yaml"]


def test_seed_has_no_fallback(tmp_path):
    from tsrec.core.config import global_seed

    p = tmp_path / "params.yaml"
    p.write_text("data: {datasets: [X]}\n")
    with pytest.raises(ParamError, match="seed"):
        global_seed(load_params(p))
    p.write_text("seed: 7\n")
    assert global_seed(load_params(p)) == 7
