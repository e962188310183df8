"""Tiny params for training tests: synthetic dataset + tiny backbone + a fake keyword cache."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tsrec.data.datasets import load_index


def make_params(root: Path, dataset: Path, backbone: Path, **train) -> dict:
    """params dict (also written to root/params.yaml) for dataset folder ``dataset`` (name = folder name)."""
    index = load_index(dataset / "sid_index.json")
    tokens = sorted({t for sid in index.values() for t in sid})
    sem = root / "mirror" / "tsrec-authors" / "semantics"
    sem.mkdir(parents=True, exist_ok=True)
    cache = [{"token": t, "keywords": ["drill", "steel"], "description": f"This family comprises drill {t[1]} items."}
             for t in tokens]
    (sem / f"{dataset.name}.description_keywords.json").write_text(json.dumps(cache))
    kw = root / "artifacts" / dataset.name / "keywords" / "authors.json"  # where tsrec.commands.keywords.cache_path points
    kw.parent.mkdir(parents=True, exist_ok=True)
    kw.write_text(json.dumps(cache))
    params = {
        "seed": 0,
        "data": {"out": str(dataset.parent), "mirror": str(root / "mirror")},
        "keywords": {"out": str(root / "artifacts"),
                     "datasets": {dataset.name: {"use": "authors", "teachers": ["authors"]}}},
        # the tiny profile pins what it relies on (so params.yaml's CPU choices do not reach the tests)
        "tasks": {"max_len": 64, "title_words": 12, "title_history": 5, "item2sid": {"share": 0.2}, "sid2item": {"share": 0.2},
                  "sid_hist2title": {"share": 0.1}, "title_hist2sid": {"share": 0.1}},
        "train": {"out": str(root / "artifacts"), "max_steps": 4, "batch_size": 8,
                  "eval_steps": 2, "logging_steps": 1, "warmup_steps": 1, "valid_rows": 8, "lr": 1e-3,
                  "threads": 1, "schedule": "cosine", "min_delta": 0.0, **train},
        "backbone": {"model": str(backbone), "name": backbone.name, "out": str(backbone.parent),
                     "keep_layers": None, "finetune": "lora", "lora": {"r": 4, "alpha": 8}},
        "variants": {"tsrec": {}, "sft": {"sainit": {"random": True}, "tasks": {"tsalign": {"enabled": False}}}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    params["_path"] = str(root / "params.yaml")
    return params
