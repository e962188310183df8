"""llm-baseline: the text-based LLM recommenders of the paper's table, BIGRec, D3 and S-DPO (stages llm-sft and
llm-baseline; docs/llm_baselines.md). ``--sft-only`` trains the title SFT the three share
(``tsrec.baselines.llm_titles``); otherwise S-DPO is trained from it (``tsrec.baselines.sdpo``) and the model is
scored into the evaluate stage's files (``tsrec.baselines.llm_scoring``). This module resolves params into the
typed inputs of those steps (``tsrec.baselines.llm_config``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tsrec.baselines.llm_config import AssistantConfig, LLMBaselinesConfig, LLMJob
from tsrec.baselines.llm_scoring import ScoreSettings, score
from tsrec.baselines.llm_titles import read_meta, train_title_sft
from tsrec.baselines.names import SDPO_RUN, SFT_RUN
from tsrec.baselines.sdpo import train_sdpo
from tsrec.core import pinning
from tsrec.core.config import deep_merge, global_seed, section
from tsrec.core.errors import ParamError
from tsrec.data.datasets import DataConfig
from tsrec.data.layout import resolve_index
from tsrec.lm.llm import backbone_config
from tsrec.model.runs import TrainConfig, resolve_run_dir
from tsrec.model.scoring import EvaluateConfig, run_prompts
from tsrec.model.tasks import tasks_config


def llm_config(params: dict) -> LLMBaselinesConfig:
    return section(params, "llm_baselines", LLMBaselinesConfig)


def sft_params(params: dict) -> dict:
    """params with ``llm_baselines.train`` merged over the ``train`` section (the title SFT's budget)."""
    over = llm_config(params).train
    return deep_merge(params, {"train": over}) if over else params


def llm_job(params: dict, ds: str, seed: int) -> LLMJob:
    return LLMJob(ds=ds, seed=int(seed), data_dir=Path(section(params, "data", DataConfig).out) / ds,
                  cfg=llm_config(params), backbone=backbone_config(params), repro=pinning.config(params),
                  params_file=params.get("_path"))


def trained_prompts(params: dict, run: Path):
    """The prompt text ``run`` was trained with (its meta's ``tasks``; params' where it has none yet)."""
    return run_prompts(read_meta(run), tasks_config(params).prompts)


def title_sft(params: dict, ds: str, seed: int, *, train: bool = True) -> dict:
    """The title SFT of (``ds``, ``seed``) shared by the three models: trained (or kept) and its meta returned;
    ``train=False``: only check that a run of this configuration exists."""
    cfg = section(sft_params(params), "train", TrainConfig)
    return train_title_sft(llm_job(params, ds, seed), cfg, tasks_config(params).prompts,
                           resolve_run_dir(params, ds, SFT_RUN, seed), train=train)


def assistant_config(params: dict) -> AssistantConfig:
    """D3's assistant: the keys of the ``baselines`` section it reads (raw: the stage declares only those)."""
    raw = params.get("baselines") or {}
    sas = dict(raw.get("sasrec") or {})
    train = {**(raw.get("train") or {}), **(sas.pop("train", None) or {})}
    return AssistantConfig(max_len=int(raw.get("max_len", 10)), out=raw.get("out", "results"),
                           seeds=list(raw.get("seeds") or []), sasrec=sas, train=train)


def command_line(params: dict) -> str:
    if sys.argv[1:2] == ["--params"]:
        return shlex.join(["tsrec", "--params", params.get("_path", "params.yaml"), *sys.argv[2:]])
    return shlex.join(["tsrec", *sys.argv[1:]])


def score_settings(args, params: dict, ds: str, seed: int) -> ScoreSettings:
    run = resolve_run_dir(params, ds, SDPO_RUN if args.model == "sdpo" else SFT_RUN, seed)
    return ScoreSettings(run=run, prompts=trained_prompts(params, run),
                         evaluate=section(params, "evaluate", EvaluateConfig), index_file=resolve_index(params, ds),
                         subsample_seed=global_seed(params), results=args.results, artifacts=args.artifacts,
                         command=command_line(params),
                         assistant=assistant_config(params) if args.model == "d3" else None)


def add_arguments(p) -> None:
    from tsrec.baselines.names import LLM_MODELS  # imports nothing: --help loads no torch

    p.add_argument("--dataset", required=True)
    p.add_argument("--model", choices=LLM_MODELS, help="the baseline to train (S-DPO) and score")
    p.add_argument("--sft-only", action="store_true", help="train the shared title SFT of --seed only "
                   "(stage llm-sft); without it the SFT run must exist")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the top-level seed)")
    p.add_argument("--results", default="results")
    p.add_argument("--artifacts", default="artifacts")


def run(args, params) -> None:
    lcfg = llm_config(params)
    seed = global_seed(params) if args.seed is None else int(args.seed)
    ds = args.dataset
    if args.sft_only:
        meta = title_sft(params, ds, seed)
        print(f"{ds}/{SFT_RUN} seed {seed}: {meta.get('train')}")
        return
    if args.model is None:
        raise ParamError("--model is required (or --sft-only)", field="--model")
    if args.model not in lcfg.models:
        raise ParamError(f"model {args.model!r} is not in llm_baselines.models {lcfg.models}",
                         file=params.get("_path"), field="llm_baselines.models")
    title_sft(params, ds, seed, train=False)  # the shared SFT must exist, made with this configuration
    job = llm_job(params, ds, seed)
    if args.model == "sdpo":
        sft_dir = resolve_run_dir(params, ds, SFT_RUN, seed)
        train_sdpo(job, sft_dir, resolve_run_dir(params, ds, SDPO_RUN, seed), trained_prompts(params, sft_dir))
    m = score(job, args.model, score_settings(args, params, ds, seed))
    print(f"{ds}/{args.model} seed {seed}: NDCG@10={m['NDCG@10']:.4f} item/NDCG@10={m['item/NDCG@10']:.4f} "
          f"HR@10={m['HR@10']:.4f} n={m['n_rows']}")
