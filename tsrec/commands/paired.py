"""paired: compare two evaluated variants on the same rows (no decoding), from the per-row ranks the evaluate
stage saved beside each metrics file, pooled over the seeds both have (tsrec.reporting.paired).

``tsrec paired --dataset DS --variant A --other B`` -> ``results/<DS>/paired/A_vs_B[_valid].json``.
A command run by hand after ``dvc repro`` (like ``tsrec check``), not a pipeline stage."""

from __future__ import annotations

import json

from tsrec.core.config import global_seed
from tsrec.core.io import write_json
from tsrec.model.scoring import command_line
from tsrec.reporting.paired import paired_path, paired_variants


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True, help="A (e.g. tsrec)")
    p.add_argument("--other", required=True, help="B (e.g. sft): the report is A - B")
    p.add_argument("--split", choices=["valid", "test"], help="default: evaluate.split")
    p.add_argument("--seed", type=int, help="compare only this seed's runs (default: every seed both have)")
    p.add_argument("--results", default="results", help="results root (metrics JSON and row ranks)")


def run(args, params) -> None:
    split = args.split or (params.get("evaluate") or {}).get("split", "test")
    out = paired_variants(args.results, args.dataset, args.variant, args.other, split,
                          global_seed(params), args.seed)  # the top-level seed seeds the bootstrap
    out["command"] = command_line(args, params.get("_path"), "paired")
    write_json(paired_path(args.results, args.dataset, args.variant, args.other, split), out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("inputs", "command")}))
