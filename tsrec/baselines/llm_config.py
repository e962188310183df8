"""The ``llm_baselines`` section (BIGRec, D3, S-DPO: ``tsrec.baselines.llm_titles`` has the overview) and the
typed inputs the LLM-baseline steps take from the command (``LLMJob``, D3's ``AssistantConfig``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from tsrec.baselines.names import LLM_MODELS, check_models
from tsrec.core.pinning import ReproConfig
from tsrec.lm.llm import BackboneConfig
from tsrec.model.tasks import PromptText, template_fields

@dataclasses.dataclass
class GroundingConfig:
    """BIGRec's step 2 (official: num_beams 4, max_new_tokens 128, the base LLM embeds both sides)."""
    encoder: Literal["base", "tuned"] = "base"
    gen_beams: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16   # texts per embedding forward pass

    def validate(self) -> None:
        if min(self.gen_beams, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("gen_beams, max_new_tokens and batch_size must be >= 1")


@dataclasses.dataclass
class D3Config:
    assistant: Literal["sasrec", "none"] = "sasrec"  # the text-free assistant (a harness ID model)
    guidance_scale: float = 0.8  # gs: gs * log p_LLM + (1 - gs) * log p_assistant; 1.0 = no assistant
    temperature: float = 1.0     # official TemperatureLogitsWarper (1.0 there)

    def validate(self) -> None:
        if not 0 < self.guidance_scale <= 1 or self.temperature <= 0:
            raise ValueError("guidance_scale must be in (0, 1], temperature > 0")


@dataclasses.dataclass
class SDPOConfig:
    """softmax_dpo.sh / softmax_dpo.py: neg_num 3, beta 1, lr 1e-5, 3 epochs, cosine, warmup ratio 0.05,
    4 x 8 accumulation x 4 GPUs per step."""
    neg_num: int = 3
    beta: float = 1.0
    lr: float = 1.0e-5
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 8
    schedule: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    train_prompts: int | None = 1024  # fixed seeded subsample of the train rows (None: all)
    logging_steps: int = 10

    def validate(self) -> None:
        if self.neg_num < 1 or self.beta <= 0 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("neg_num must be >= 1, beta and lr > 0, warmup_ratio in [0, 1)")
        if self.batch_size < 1 or self.grad_accum < 1 or (self.train_prompts is not None and self.train_prompts < 1):
            raise ValueError("batch_size, grad_accum and train_prompts must be >= 1")


def _prompt() -> PromptText:
    return PromptText(prompt="User history: {titles}\nNext item title:", response=' "{title}"')


@dataclasses.dataclass
class LLMBaselinesConfig:
    models: list[str] = dataclasses.field(default_factory=lambda: list(LLM_MODELS))
    # the DVC matrix (stages llm-sft, llm-baseline); the seeds: those of train.seeds, so the report pairs them
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["Industrial_and_Scientific", "Office_Products"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42, 43, 44])
    title_words: int = 0       # titles cut to N words in prompts and responses (0 = whole titles, official)
    title_history: int = 10    # last N titles of the history (official: the whole history, <= 10 here)
    max_len: int = 512         # tokens per example; longer prompts are cut from the left
    batch_size: int = 4        # prompts per decoding batch
    prompt: PromptText = dataclasses.field(default_factory=_prompt)
    train: dict = dataclasses.field(default_factory=dict)  # overrides of the train section for the title SFT
    grounding: GroundingConfig = dataclasses.field(default_factory=GroundingConfig)
    d3: D3Config = dataclasses.field(default_factory=D3Config)
    sdpo: SDPOConfig = dataclasses.field(default_factory=SDPOConfig)

    def validate(self) -> None:
        check_models(self.models, LLM_MODELS)
        if self.title_words < 0 or self.title_history < 1 or self.max_len < 16 or self.batch_size < 1:
            raise ValueError("title_words >= 0, title_history >= 1, max_len >= 16, batch_size >= 1")
        for where, text in (("prompt.prompt", self.prompt.prompt), ("prompt.response", self.prompt.response)):
            bad = template_fields(text) - {"titles", "title"}
            if bad:
                raise ValueError(f"{where}: unknown field(s) {sorted(bad)}; allowed ['title', 'titles']")
        if "{title}" not in self.prompt.response:
            raise ValueError("prompt.response must contain {title}")



@dataclasses.dataclass
class LLMJob:
    """One (dataset, seed) of the LLM baselines: what every step takes, resolved from params by the command."""
    ds: str
    seed: int
    data_dir: Path                      # <data.out>/<DS>
    cfg: LLMBaselinesConfig
    backbone: BackboneConfig
    repro: ReproConfig                  # recorded (``tsrec.core.pinning.record``) in each run's meta
    params_file: str | None = None      # named in errors


@dataclasses.dataclass
class AssistantConfig:
    """What D3's SASRec assistant reads of the ``baselines`` section (only these keys are the llm-baseline stage's
    params, so they are read raw, not through the whole ``BaselinesConfig``)."""
    max_len: int = 10
    out: str = "results"                # where the baseline stage's tuned SASRec records are looked up
    seeds: list[int] = dataclasses.field(default_factory=list)
    sasrec: dict = dataclasses.field(default_factory=dict)  # baselines.sasrec without its train key
    train: dict = dataclasses.field(default_factory=dict)   # baselines.train, updated by baselines.sasrec.train
