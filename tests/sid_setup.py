"""The tiny backbone with a dataset's SID tokens added, and a one-keyword cache for them (task/profile tests)."""

import json
from pathlib import Path

from tsrec.data.datasets import load_index
from tsrec.lm.llm import add_sid_tokens, load_backbone
from tsrec.data.sids import index_tokens


def tokenizer_and_cache(ds: Path, backbone: Path, kw: Path, *, token_in_description: bool = False):
    """(keyword cache path, tokenizer with the SID tokens, the tokens)."""
    tokens = index_tokens(load_index(ds / "sid_index.json"))
    suffix = (lambda t: f" {t}") if token_in_description else (lambda t: "")
    kw.write_text(json.dumps([{"token": t, "keywords": ["a"],
                               "description": f"Items of family {t[1]} made of steel{suffix(t)}."} for t in tokens]))
    model, tok = load_backbone(backbone)
    add_sid_tokens(model, tok, tokens)
    return kw, tok, tokens
