"""train: multi-task SFT of the backbone with SID tokens (one run per variant), HF Trainer.

Run folder ``artifacts/<DS>/runs/<variant>/seed<N>/`` (tsrec.data.layout): ``checkpoints/`` (safetensors, resumed when present and
made by the same configuration), ``plots/{train,valid}.csv`` (loss + lr, valid loss: DVC plots),
``final/`` (merged plain model + tokenizer + ``tsrec_meta.json``). Works unchanged under
``torchrun``/``accelerate launch`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys

from tsrec.core.io import output_lock, write_json
from tsrec.data.layout import results_dir
from tsrec.model.runs import PLOTS, RunSpec, resolve_run
from tsrec.model.sft import dry_run, format_dry_run, train_run

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the top-level seed)")
    p.add_argument("--out", default=None, help="run folder (default artifacts/<DS>/runs/<variant>/seed<N>)")
    p.add_argument("--results", default="results",
                   help="copy the loss curves to <results>/<DS>/<variant>/seed<N>/")
    p.add_argument("--dry-run", action="store_true", help="train nothing: print the resolved config, examples, "
                   "tokens and label tokens per task, and the steps")
    p.add_argument("--report", help="--dry-run: also write the report as JSON here")
    p.add_argument("--tokenizer", help="--dry-run: count tokens with this tokenizer folder (default: the backbone's)")
    p.add_argument("--world-size", type=int, default=None, help="--dry-run: processes (default $WORLD_SIZE or 1)")
    p.add_argument("--tokens-per-s", type=float, help="--dry-run: add a time estimate at this train speed")


def run(args, params: dict) -> None:
    spec = resolve_run(params, args.dataset, args.variant, seed=args.seed, out=args.out)
    if args.dry_run:
        world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        report = dry_run(spec, tokenizer=args.tokenizer, world_size=world, tokens_per_s=args.tokens_per_s)
        report["command"] = "tsrec " + " ".join(sys.argv[1:])
        if args.report:
            write_json(args.report, report)
        print(format_dry_run(report), end="")
        return
    # one writer per run: a second `tsrec train` of it stops at once instead of interleaving its curves (the
    # processes of one DDP run share it: only rank 0 writes the run's files)
    with output_lock(spec.run_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        _train(args, spec)


def _train(args, spec: RunSpec) -> None:
    meta = train_run(spec)
    if int(os.environ.get("RANK", "0")) == 0 and args.results:
        dest = results_dir(args.results, spec.dataset, spec.variant, spec.seed)
        dest.mkdir(parents=True, exist_ok=True)
        for name in PLOTS:
            shutil.copyfile(spec.run_dir / "plots" / name, dest / name)
        summary = {"command": "tsrec " + " ".join(sys.argv[1:]), "params_file": spec.params_file,
                   **{k: meta[k] for k in ("dataset", "variant", "seed", "backbone_id", "index_sha256", "train",
                                           "params")}}
        write_json(dest / "train_summary.json", summary)
        log.info("%s/%s: %s", spec.dataset, spec.variant, json.dumps(meta["train"]))
