"""Speed of the embed and codebook stages on real Industrial data (CPU).

embed: 256 real item texts through all-MiniLM-L6-v2 at max_seq_length 128 vs 256.
codebook: rqkmeans (3 x 256) vs rqvae (3 x 256, 30 epochs; the default profile runs `codebook.rqvae.epochs`,
scale linearly) on the real embeddings.
Run: flock /tmp/tsrec-cpu.lock python -m pytest benchmarks/bench_codebook.py --benchmark-enable
Skips when `tsrec data` / `tsrec embed` outputs for Industrial_and_Scientific are absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DS = "Industrial_and_Scientific"
ITEMS = REPO / "data" / DS / "items.parquet"
EMB = REPO / "artifacts" / DS / "embed" / "embeddings.npy"


@pytest.mark.skipif(not ITEMS.is_file(), reason="run `tsrec data` first")
@pytest.mark.parametrize("max_seq_length", [128, 256])
def test_embed_256_items(benchmark, max_seq_length):
    from tsrec.data.datasets import load_items
    from tsrec.semantics.encoder import encode_texts, item_text

    items = load_items(ITEMS.parent).head(256)
    texts = [item_text(t, d) for t, d in zip(items.title, items.description)]
    encode_texts(texts[:8], max_seq_length=max_seq_length, progress=False)  # load the model outside the timing
    emb = benchmark.pedantic(encode_texts, args=(texts,), kwargs={"max_seq_length": max_seq_length, "progress": False},
                             rounds=2, iterations=1)
    assert emb.shape == (256, 384)


@pytest.mark.skipif(not EMB.is_file(), reason="run `tsrec embed` first")
@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_codebook_industrial(benchmark, method):
    from tsrec.semantics import codebook as cb

    x = np.load(EMB)
    if method == "rqkmeans":
        fn, cfg = cb.rqkmeans, cb.RQKMeansConfig()
    else:
        fn, cfg = cb.rqvae, cb.RQVAEConfig(epochs=30)
    codes, _, _ = benchmark.pedantic(fn, args=(x, 3, 256, 42, cfg), rounds=2, iterations=1)
    assert codes.shape == (len(x), 3)
