"""rl: GRPO after SFT (``tsrec rl``), the RL stage of MiniOneRec and of the TS-Rec authors' code; the method
(config, prompt set, rollout, loss, loop) is tsrec.model.grpo.

Starts from a trained SFT run of seed N (``runs/<variant>/seed<N>/final``, variant ``sft`` or ``tsrec``) and
writes the run ``runs/<variant>_rl/seed<N>/`` (same layout: ``final/``, ``checkpoints/``, ``plots/``;
tsrec.data.layout) that ``tsrec evaluate --variant <variant>_rl --seed N`` loads like any other; its curves and
summary go to ``results/<DS>/<variant>_rl/seed<N>/``. The seed N (default: the top-level ``seed``) seeds
what the run draws: the prompt subsample, the batch order and the valid subsample. This module resolves
params once (the rl section, the seed, the run folders, the SFT run's index, the device, the repro pinning)
and hands the library typed values.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tsrec.core import distributed as dist
from tsrec.core import pinning
from tsrec.core.config import global_seed, section
from tsrec.core.errors import ParamError
from tsrec.core.io import write_json
from tsrec.data.datasets import DataConfig
from tsrec.data.layout import resolve_index, results_dir
from tsrec.model import grpo
from tsrec.model.grpo import PLOTS, rl_config, rl_variant
from tsrec.model.runs import resolve_run_dir
from tsrec.model.scoring import run_index

log = logging.getLogger(__name__)


def rl_run(params: dict, ds: str, variant: str, *, seed: int | None = None, base: str | Path | None = None,
           out: str | Path | None = None, callbacks: Sequence[grpo.Callback | Callable[[int, dict], None]] = ()
           ) -> dict:
    """GRPO from the SFT run of ``variant`` and ``seed`` (default: the top-level ``seed``); writes
    ``<out>/final`` (default runs/<variant>_rl/seed<N>); returns its meta. Resolves params into a
    ``grpo.RLRun`` and calls ``grpo.train`` (``callbacks``: see there)."""
    cfg = rl_config(params)
    seed = global_seed(params) if seed is None else int(seed)
    base = Path(base) if base else resolve_run_dir(params, ds, variant, seed)
    out = Path(out) if out else resolve_run_dir(params, ds, rl_variant(variant), seed)
    grpo.require_sft_run(base, variant)
    ipath = run_index(base, resolve_index(params, ds))
    try:
        device = dist.resolve_device(cfg.device, dist.world())
    except ValueError as exc:
        raise ParamError(str(exc), file=params.get("_path"), field="rl.device") from None
    run = grpo.RLRun(dataset=ds, variant=variant, seed=seed, base=base, out=out,
                     data_dir=Path(section(params, "data", DataConfig).out) / ds, index_path=ipath, device=device,
                     params_file=params.get("_path"))
    return grpo.train(run, cfg, repro=pinning.config(params), callbacks=callbacks)


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True,
                   help="the SFT variant to start from (writes runs/<variant>_rl/seed<N>)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the SFT run to start from and of this run (default: the top-level seed)")
    p.add_argument("--base-dir", default=None,
                   help="SFT run folder (default <train.out>/<DS>/runs/<variant>/seed<N>)")
    p.add_argument("--out", default=None, help="run folder (default <train.out>/<DS>/runs/<variant>_rl/seed<N>)")
    p.add_argument("--results", default="results",
                   help="copy the curves and the summary to <results>/<DS>/<variant>_rl/seed<N>/")


def run(args, params: dict) -> None:
    cfg = rl_config(params)
    if args.variant not in cfg.variants:
        raise ParamError(f"variant {args.variant!r} is not in rl.variants {cfg.variants}", file=params.get("_path"),
                         field="rl.variants")
    name = rl_variant(args.variant)
    seed = global_seed(params) if args.seed is None else args.seed
    meta = rl_run(params, args.dataset, args.variant, seed=seed, base=args.base_dir, out=args.out)
    if not dist.world().main:
        return
    out = Path(args.out) if args.out else resolve_run_dir(params, args.dataset, name, seed)
    dest = results_dir(args.results, args.dataset, name, seed)
    dest.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        shutil.copyfile(out / "plots" / plot, dest / plot)
    summary = {"command": "tsrec " + " ".join(sys.argv[1:]), "params_file": params.get("_path"),
               **{k: meta[k] for k in ("dataset", "variant", "seed", "backbone_id", "index_sha256", "base", "rl")},
               "params": meta["params"]["rl"]}
    write_json(dest / "rl_summary.json", summary)
    log.info("%s/%s: %s", args.dataset, name, json.dumps(meta["rl"]))
