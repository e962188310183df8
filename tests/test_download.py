"""``data.source: download`` from a clean clone: the data stage and the keywords stage (teacher ``authors``) fetch
every file they need over HTTP, sha256-checked, with no mirror configured. The files are the mirror's, served
by a loopback HTTP server laid out as raw.githubusercontent.com (``$TSREC_DOWNLOAD_BASE`` points there)."""

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

from tsrec.data import download
from tsrec.data.datasets import MINIONEREC_COMMIT, load_items
from tsrec.core.errors import TsrecError
from tsrec.semantics.keyword_cache import cache_path, load_cache
from tsrec.semantics.teaching import authors_file, run_dataset
from tsrec.semantics.teaching import resolve_job
from tsrec.semantics.keyword_cache import keywords_config
from tsrec.data.datasets import DataConfig
from tsrec.core.config import section

DS = "Industrial_and_Scientific"
KEYWORDS = f"{DS}.description_keywords.json"


@pytest.fixture()
def github(tmp_path, mirror, monkeypatch):
    """A loopback server holding the mirror's files at the paths of GitHub's raw files; yields (root, requests)."""
    root = tmp_path / "www"
    amazon = root / "AkaliKong" / "MiniOneRec" / MINIONEREC_COMMIT / "data" / "Amazon"
    amazon.parent.mkdir(parents=True)
    amazon.symlink_to(mirror / "minionerec" / "Amazon")
    sem = root / "jiaweif3ng" / "TS-Rec-Review" / download.AUTHORS_COMMIT / "data" / "Amazon" / "semantics"
    sem.parent.mkdir(parents=True)
    sem.symlink_to(mirror / "tsrec-authors" / "semantics")
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            served.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(download.BASE_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    yield root, served
    server.shutdown()


def _params(tmp_path) -> dict:
    p = {"seed": 1,
         "data": {"datasets": [DS], "source": "download", "mirror": str(tmp_path / "no-mirror-here"),
                  "out": str(tmp_path / "data"), "download_cache": str(tmp_path / "dl")},
         "embed": {"out": str(tmp_path / "art")},
         "keywords": {"datasets": {DS: {"use": "authors", "teachers": ["authors"]}}, "out": str(tmp_path / "art"),
                      "journal": str(tmp_path / "journal"), "results": str(tmp_path / "res"), "coherence_draws": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    p["_path"] = str(tmp_path / "params.yaml")
    return p


def _fake_encode(texts):
    return np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)


def test_data_and_keywords_stages_from_download_without_mirror(tmp_path, github):
    root, served = github
    params = _params(tmp_path)
    res = subprocess.run([sys.executable, "-m", "tsrec", "--params", params["_path"], "data"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{DS}: protocol=reconstructed items=3686" in res.stdout
    assert json.loads((tmp_path / "data" / DS / "card.json").read_text())["source"]["kind"] == "download"
    assert {p.rsplit("/", 1)[-1] for p in served} >= {f"{DS}.item.json", f"{DS}.index.json"}

    # the keywords stage (teacher authors) on the downloaded data; a stand-in for the embed stage's output
    emb = tmp_path / "art" / DS / "embed" / "embeddings.npy"
    emb.parent.mkdir(parents=True)
    np.save(emb, _fake_encode(list(load_items(tmp_path / "data" / DS)["title"])))
    run_dataset(resolve_job(params, DS), ["authors"], encode=_fake_encode, command="tsrec keywords")
    assert len(load_cache(cache_path(keywords_config(params), DS))) == 560  # 48 a + 256 b + 256 c tokens of the official index
    assert any(p.endswith(KEYWORDS) for p in served)
    got = authors_file(section(params, "data", DataConfig), keywords_config(params), DS)
    assert got.is_relative_to(tmp_path / "dl") and download.sha256_file(got) == download.AUTHORS_SHA256[KEYWORDS]
    n = len(served)
    authors_file(section(params, "data", DataConfig), keywords_config(params), DS)  # a second call reuses the verified download: no request
    assert len(served) == n


def test_download_refuses_a_changed_file_and_leaves_nothing(tmp_path, github):
    root, _ = github
    sem = root / "jiaweif3ng" / "TS-Rec-Review" / download.AUTHORS_COMMIT / "data" / "Amazon" / "semantics"
    sem.unlink()
    sem.mkdir()
    (sem / KEYWORDS).write_text("[]")
    with pytest.raises(TsrecError, match="sha256 mismatch") as exc:
        authors_file(section(_params(tmp_path), "data", DataConfig), keywords_config(_params(tmp_path)), DS)
    assert str(exc.value.file).endswith(KEYWORDS)
    assert not any((tmp_path / "dl").rglob(KEYWORDS))


def test_download_unreachable_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv(download.BASE_ENV, "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(TsrecError, match="download failed") as exc:
        authors_file(section(_params(tmp_path), "data", DataConfig), keywords_config(_params(tmp_path)), DS)
    assert isinstance(exc.value.__cause__, OSError)


def test_no_pin_for_office_keywords(tmp_path):
    with pytest.raises(TsrecError, match="no pinned checksum for the authors' keyword file of 'Office_Products'"):
        authors_file(section(_params(tmp_path), "data", DataConfig), keywords_config(_params(tmp_path)), "Office_Products")
