"""Convert the base LM once into a cached fp32 safetensors folder (model + tokenizer) with a meta file
(``tsrec backbone``); ``tsrec.lm.llm`` loads the result."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from tsrec.core.io import atomic_dir, sha256_file, write_json
from tsrec.lm.llm import META_FILE, TINY, BackboneConfig, is_tied, load_raw

log = logging.getLogger(__name__)


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
