"""The fit cache of the baseline stage: every finished fit (a tuning config, a seed run) of one (dataset, model)
is saved so that a killed stage resumes where it stopped, with the same weights and so the same metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from tsrec.baselines.config import BaselinesConfig
from tsrec.baselines.trainer import Recommender, SeqData
from tsrec.core.io import atomic_file, claim_checkpoints, sha256_file, sha256_json

log = logging.getLogger(__name__)

# the files that define how a model trains and scores (relative to tsrec/): a saved fit is reused only while
# they are unchanged
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

    def __init__(self, folder: Path, data: SeqData, model: str, cfg: BaselinesConfig, max_rows: int | None):
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
