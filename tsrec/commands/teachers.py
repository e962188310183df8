"""teachers: the optional keyword caches (``keywords.datasets.<DS>.optional``, e.g. the slow ``hf`` teacher).

Same journal, checks and coherence as the ``keywords`` stage, but written to ``artifacts/<DS>/teachers/`` and
``results/keywords/<DS>.teachers.json``, so the default pipeline never waits for (or fails on) them.
Run with ``make teachers``; a cache built here is read downstream only after moving it to ``teachers``.
"""

from __future__ import annotations

import shlex
import sys

from tsrec.core.config import section
from tsrec.data.datasets import DataConfig
from tsrec.semantics.keyword_cache import keywords_config
from tsrec.semantics.teaching import resolve_job, run_dataset


def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")


def run(args, params) -> None:
    cfg = keywords_config(params)
    command = "tsrec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for ds in args.dataset or section(params, "data", DataConfig).datasets:
        optional = cfg.choice(ds, params.get("_path", "params.yaml")).optional
        run_dataset(resolve_job(params, ds), optional, command=command, optional=True)
