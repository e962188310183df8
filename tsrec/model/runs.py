"""A trained run's folder (``<train.out>/<DS>/runs/<variant>/seed<N>``, tsrec.data.layout): its curves
(``plots/*.csv``), its ``final/`` model + tokenizer + ``tsrec_meta.json``, and ``load_trained``, which
refuses a model trained on another SID index or backbone. Written by train and rl; read by evaluate and rl."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch

from tsrec.core import pinning
from tsrec.core.config import DEFAULT_PARAMS, deep_merge, global_seed, section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, atomic_file, load_or_explain, sha256_file, sha256_json, write_json
from tsrec.core.precision import TrainPrecision
from tsrec.data.datasets import DataConfig, load_index
from tsrec.data.layout import index_path, train_run_dir
from tsrec.data.sids import CodebookConfig, codebook_config, index_tokens
from tsrec.lm.llm import BackboneConfig, backbone_config
from tsrec.model.sainit import SAInitConfig
from tsrec.model.sainit import config as sainit_config
from tsrec.model.tasks import TasksConfig, tasks_config
from tsrec.semantics.keyword_cache import KeywordsConfig, cache_path, keywords_config

META = "tsrec_meta.json"
VARIANT_SECTIONS = ("sainit", "tasks", "train", "backbone")  # what a variant may override (and a run records)
# a variant may also pick another keyword cache (keywords.datasets.<DS>.use: the teacher ablation); the cache's
# sha256 is in the run's fingerprint and meta, so the section is not recorded with the others
OVERRIDABLE = (*VARIANT_SECTIONS, "keywords")
MATRIX_KEYS = ("datasets", "variants", "seeds", "extra")  # train keys that list runs (DVC matrices), not settings


@dataclasses.dataclass
class ExtraRuns:
    """Runs outside the main matrix (DVC stages train_extra / evaluate_extra, the same commands): another
    product datasets x variants x seeds, e.g. one seed of the SA-Init depth and teacher ablations."""
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific"])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["sainit_a", "sainit_ab", "teacher_ctfidf"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42])


@dataclasses.dataclass
class TrainConfig:
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific", "Office_Products"])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["tsrec", "sft", "no_sainit", "no_tsalign"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42, 43, 44])  # one run per seed (DVC matrix)
    extra: ExtraRuns = dataclasses.field(default_factory=ExtraRuns)
    out: str = "artifacts"
    epochs: float = 10.0
    max_steps: int = 1800           # > 0 overrides epochs
    batch_size: int = 16            # per process and micro-step
    grad_accum: int = 1
    global_batch: int | None = None  # examples per optimizer step over all processes: sets grad_accum (authors 1024)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: Literal["cosine", "linear", "constant_with_warmup"] = "linear"  # over max_steps (or the epochs)
    eval_steps: int | float = 300   # also the checkpoint interval; < 1: fraction of the total steps (authors 0.05)
    patience: int = 3               # early stopping on valid loss
    min_delta: float = 0.005         # a valid-loss gain below this does not count as improvement (plateau)
    valid_rows: int = 256           # fixed subsample of valid seqrec rows for the valid loss (0 = all)
    early_stopping: bool = False    # stop on a plateau of the selection metric (patience, min_delta); false: train max_steps
    select: Literal["valid_loss", "valid_ndcg10", "final"] = "final"  # the checkpoint final/ holds
    rank_rows: int = 1000           # > 0: valid HR/NDCG@K by constrained beam search on this fixed seeded valid subsample at every evaluation
    rank_beams: int = 20
    rank_batch: int = 8
    group_by_length: bool = True
    logging_steps: int = 10
    save_total_limit: int = 2
    keep_checkpoints: bool = False  # delete checkpoints/ once final/ is written
    threads: int = 0                # torch threads per process (0 = leave as is)
    precision: TrainPrecision = "fp32"  # auto: bf16 autocast where native (machine-dependent); bf16_pure: bf16
                                        # weights + optimizer state, no fp32 master copy (the authors')

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.eval_steps >= 1 if isinstance(self.eval_steps, int) else 0 < self.eval_steps < 1):
            raise ValueError(f"eval_steps must be an integer >= 1 or a fraction in (0, 1), got {self.eval_steps}")
        if self.global_batch is not None and (self.global_batch < 1 or self.global_batch % self.batch_size):
            raise ValueError(f"global_batch must be a positive multiple of batch_size, got {self.global_batch}")
        if self.warmup_steps < 0 or self.patience < 1 or self.valid_rows < 0 or self.min_delta < 0:
            raise ValueError("warmup_steps, valid_rows must be >= 0 and patience >= 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("epochs must be > 0 (or max_steps > 0)")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.rank_rows < 0 or self.rank_beams < 1 or self.rank_batch < 1:
            raise ValueError("rank_rows must be >= 0, rank_beams and rank_batch >= 1")
        if self.select == "valid_ndcg10" and not self.rank_rows:
            raise ValueError("select: valid_ndcg10 needs rank_rows > 0 (the valid rows it is measured on)")
        if self.early_stopping and self.select == "final":
            raise ValueError("early_stopping stops on the selection metric: select valid_loss or valid_ndcg10, "
                             "or set early_stopping: false")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if len(set(self.extra.seeds)) != len(self.extra.seeds):
            raise ValueError(f"extra.seeds must be distinct integers, got {self.extra.seeds}")
        both = sorted(set(self.extra.variants) & set(self.variants))
        if both and set(self.extra.datasets) & set(self.datasets) and set(self.extra.seeds) & set(self.seeds):
            raise ValueError(f"extra.variants {both} are in variants too: their runs would be two stages at once")


# ---------------------------------------------------------------- variants
def variant_params(params: dict, variant: str) -> dict:
    """params with the variant's overrides (``variants.<name>``: a mapping of section -> overrides) applied."""
    variants = params.get("variants") or {}
    if not isinstance(variants, dict) or variant not in variants:
        raise ParamError(f"unknown variant {variant!r}; defined: {sorted(variants) if isinstance(variants, dict) else []}",
                         file=params.get("_path"), field="variants")
    return apply_overrides(params, variants[variant] or {}, f"variants.{variant}")


def apply_overrides(params: dict, over: dict, where: str) -> dict:
    """params with ``over`` (section -> overrides, sections of OVERRIDABLE only) merged in."""
    if not isinstance(over, dict) or set(over) - set(OVERRIDABLE):
        raise ParamError(f"overrides only {list(OVERRIDABLE)}, got {over!r}", file=params.get("_path"),
                         field=where)
    return deep_merge(params, over)


def backbone_id(path: str | Path) -> str:
    """Name + sha256 of the backbone's weights (a checkpoint from another backbone is refused)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TsrecError("no *.safetensors in backbone folder (run `tsrec backbone`)", file=path)
    digest = sha256_json([sha256_file(f) for f in files])
    return f"{path.name}@{digest[:16]}"


# ---------------------------------------------------------------- logging callback
PLOTS = {"train.csv": ["step", "epoch", "learning_rate", "loss"], "valid.csv": ["step", "epoch", "eval_loss"],
         # train.rank_rows > 0: valid ranking at every evaluation (header only otherwise); the per-row ranks of
         # each point in valid_rank_rows.csv (paired tests between checkpoints and runs)
         "valid_rank.csv": ["step", "epoch", "rows", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20",
                            "wall_s"],
         "valid_rank_rows.csv": ["step", "row", "rank"]}


def append_row(path: Path, fields: list[str], row: dict | None) -> None:
    """Append ``row`` (None: the header only, for a new file)."""
    append_rows(path, fields, [] if row is None else [row])


def append_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


def trim_logs(plots: Path, step: int, spec: dict[str, list[str]] = PLOTS) -> None:
    """Drop logged rows after ``step``: a resume logs them again; step 0 = a fresh run."""
    for name, fields in spec.items():
        path = plots / name
        if path.exists():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
            with atomic_file(path) as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)


# ---------------------------------------------------------------- the run
@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run, resolved once from params.yaml (``resolve_run``): the variant's typed sections with its
    overrides applied, and the paths it reads and writes. What the train stage, the sweep's trials and the
    dry run take instead of the params dict."""
    dataset: str
    variant: str
    seed: int
    data: DataConfig
    codebook: CodebookConfig
    backbone: BackboneConfig
    keywords: KeywordsConfig
    sainit: SAInitConfig
    tasks: TasksConfig
    train: TrainConfig
    repro: pinning.ReproConfig
    recorded: dict       # the variant's sections as written (meta + resume fingerprint)
    shown: dict          # the same plus ``evaluate``, for the dry run's resolved YAML
    params_file: str = DEFAULT_PARAMS
    overrides: dict | None = None
    out: Path | None = None  # the run folder (default: ``<train.out>/<DS>/runs/<variant>/seed<N>``)

    @property
    def run_dir(self) -> Path:
        return self.out or train_run_dir(self.train.out, self.dataset, self.variant, self.seed)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.out) / self.dataset

    @property
    def index_path(self) -> Path:
        return index_path(self.codebook, self.data, self.dataset)

    @property
    def backbone_path(self) -> Path:
        return self.backbone.path

    @property
    def keyword_cache(self) -> Path:
        return cache_path(self.keywords, self.dataset, self.params_file)


def resolve_run_dir(params: dict, ds: str, variant: str, seed: int | None = None) -> Path:
    """``<train.out>/<DS>/runs/<variant>/seed<N>`` (default seed: the top-level ``seed``) without resolving the
    whole run (evaluate, rl and the LLM baselines read a run made before)."""
    seed = global_seed(params) if seed is None else seed
    return train_run_dir(section(params, "train", TrainConfig).out, ds, variant, seed)


def resolve_run(params: dict, ds: str, variant: str, *, seed: int | None = None, overrides: dict | None = None,
                out: str | Path | None = None) -> RunSpec:
    """The ``RunSpec`` of ``variant`` on ``ds`` with ``seed`` (default: the top-level ``seed``, which seeds
    everything the run draws); ``overrides`` (same sections as a variant's) go on top of the variant's: a sweep
    trial is the tsrec variant plus the trial's settings (recorded in the meta)."""
    if seed is not None:
        params = {**params, "seed": int(seed)}
    vp = variant_params(params, variant)
    if overrides:
        vp = apply_overrides(vp, overrides, "overrides")
    # the run's settings as written (meta, resume fingerprint); train.seeds lists runs: left out, so a run's
    # fingerprint does not depend on which other seeds are planned (and equals the one before seeds existed)
    recorded = {k: vp.get(k) for k in (*VARIANT_SECTIONS, "seed") if k in vp}
    if isinstance(recorded.get("train"), dict):
        recorded["train"] = {k: v for k, v in recorded["train"].items() if k != "seeds"}
    return RunSpec(
        dataset=ds, variant=variant, seed=global_seed(params), data=section(params, "data", DataConfig),
        codebook=codebook_config(vp), backbone=backbone_config(vp), keywords=keywords_config(vp),
        sainit=sainit_config(vp), tasks=tasks_config(vp), train=section(vp, "train", TrainConfig),
        repro=pinning.config(params), recorded=recorded,
        shown={k: vp.get(k) for k in (*VARIANT_SECTIONS, "evaluate") if k in vp},
        params_file=params.get("_path", DEFAULT_PARAMS), overrides=overrides or None,
        out=Path(out) if out else None)




# Run history in a meta's "train" / "rl" section: timings, throughput, threads, the resume point and what HF
# averages over this session's steps only (train_loss). Two runs that end with the same weights differ in them,
# so final/ (a DVC output that evaluate and rl hash) leaves them out; the results' train_summary.json /
# rl_summary.json keep them.
RUN_HISTORY = frozenset({
    "wall_s", "eval_s", "tokens_seen", "tokens_per_s", "train_tokens_per_s", "resumed_from", "train_loss",  # train
    "session_wall_s", "rollout_s", "rollout_cpu_s", "update_s", "update_cpu_s", "rollout_tokens_per_s",  # rl
    "update_tokens_per_s", "rollout_prompts_per_s", "s_per_step", "cpu_s_per_step", "torch_threads",
    "ddp", "distributed_type", "device", "processes"})


def stable_meta(meta: dict) -> dict:
    """``meta`` without the run history (``RUN_HISTORY``) of its train / rl sections."""
    return {k: {kk: vv for kk, vv in v.items() if kk not in RUN_HISTORY} if k in ("train", "rl") else v
            for k, v in meta.items()}


def save_final(model, tokenizer, meta: dict, final: Path) -> None:
    """Merge LoRA (if any) into a plain model and write it with the tokenizer and the meta (less its run
    history: ``stable_meta``), atomically."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META, stable_meta(meta))


def load_trained(run_dir: str | Path, *, index_path: str | Path | None = None,
                 backbone: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer, meta) of ``<run_dir>/final`` (fp32 weights on ``device``); refuses a model trained on
    another index/backbone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = Path(run_dir) / "final"
    if not (final / META).is_file():
        raise TsrecError("no trained model here (run `tsrec train`)", file=final / META)
    meta = json.loads((final / META).read_text(encoding="utf-8"))
    if index_path is not None:
        index = load_index(Path(index_path))  # missing / corrupt: named as such, not as "another index"
        got = sha256_file(index_path)
        if got != meta.get("index_sha256"):
            raise TsrecError(f"model was trained on another SID index (sha256 {meta.get('index_sha256')}, "
                             f"this index {got})", file=index_path, field="index_sha256")
    if backbone is not None:
        got = backbone_id(backbone)
        if got != meta.get("backbone_id"):
            raise TsrecError(f"model was trained from another backbone ({meta.get('backbone_id')}, not {got})",
                             file=backbone, field="backbone_id")
    tokenizer = load_or_explain(AutoTokenizer.from_pretrained, final, "tokenizer", "tsrec train")
    if index_path is not None:
        missing = [t for t in index_tokens(index) if t not in tokenizer.get_vocab()]
        if missing:
            raise TsrecError(f"tokenizer lacks SID tokens {missing[:10]}", file=final)
    model = load_or_explain(AutoModelForCausalLM.from_pretrained, final, "model", "tsrec train", dtype=torch.float32)
    model.to(device).eval()
    return model, tokenizer, meta
