"""keywords: per SID token, keywords + a description of its item cluster (for SA-Init and TS-Align).

A token's cluster is every item holding that token at that level (not prefix-conditioned). A teacher
(``tsrec.semantics.teachers``: ``hf``, ``openai``, ``ctfidf``; or ``authors``, the TS-Rec authors' Industrial file)
labels each cluster from a bounded sample of its members (those closest to the cluster centroid in
item-embedding space). Answers go to an append-only, fsync'ed journal
``<journal>/<DS>/<teacher>.jsonl`` keyed by sha256(cluster members + shown sample, prompt version,
teacher settings): a re-run or a killed run redoes only missing tokens. Junk answers are retried
``max_attempts`` times, then journaled as failures and reported (the stage fails; never filled).
Output: ``artifacts/<DS>/keywords/<teacher>.json`` in the authors' format
(``[{"token", "keywords", "description"}]``), plus coherence figures in ``report.json`` and
``results/keywords/<DS>.json``.
"""

from __future__ import annotations

import logging
import shlex
import sys

from tsrec.core.config import section
from tsrec.data.datasets import DataConfig
from tsrec.semantics.keyword_cache import TEACHERS, keywords_config
from tsrec.semantics.teaching import resolve_job, run_dataset

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) (default: data.datasets)")
    p.add_argument("--teacher", action="append", choices=TEACHERS,
                   help="teacher(s) to run (default: keywords.datasets.<DS>.teachers)")
    p.add_argument("--limit", type=int, help="generate at most N new tokens (timing runs; writes no output)")


def run(args, params) -> None:
    cfg = keywords_config(params)
    for ds in args.dataset or section(params, "data", DataConfig).datasets:
        choice = cfg.choice(ds, params.get("_path", "params.yaml"))
        command = "tsrec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        res = run_dataset(resolve_job(params, ds), args.teacher or choice.teachers, args.limit, command=command)
        for t, r in res["teachers"].items():
            if args.teacher is None or t in args.teacher:
                k = r["coherence"]["keywords"]
                print(f"{ds} {t}: tokens={r['tokens']} keywords own={k['own']} random={k['random']} gap={k['gap']}")
