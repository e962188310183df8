import json
from pathlib import Path

import numpy as np
import pytest

from tsrec import cli

from tsrec.semantics import codebook

from tsrec.data import datasets

from tsrec.data import layout
from tsrec.data.sids import codebook_config
from tsrec.core.errors import TsrecError

TINY_RQVAE = {"hidden": [32], "latent_dim": 8, "epochs": 15, "batch_size": 32}


def _emb(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d))
    x = centres[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _setup(tmp_path, tiny_dataset, emb=None, **cb):
    art = tmp_path / "artifacts"
    edir = art / tiny_dataset.name / "embed"
    edir.mkdir(parents=True)
    np.save(edir / "embeddings.npy", _emb() if emb is None else emb)
    cfg = {"codebook_size": 16, "methods": ["official", "rqvae", "rqkmeans"], "out": str(art),
           "report": str(tmp_path / "results"), "rqvae": TINY_RQVAE, **cb}
    p = tmp_path / "params.yaml"
    p.write_text(json.dumps({"seed": 3, "data": {"out": str(tiny_dataset.parent), "datasets": [tiny_dataset.name]},
                             "embed": {"out": str(art)}, "codebook": cfg}))
    return p, art / tiny_dataset.name / "sid", tmp_path / "results" / tiny_dataset.name / "codebook_report.json"


def test_stage_same_seed_same_bytes_and_unique_sids(tmp_path, tiny_dataset):
    params, sid, report = _setup(tmp_path, tiny_dataset)
    assert cli.main(["--params", str(params), "codebook"]) == 0
    # every file of artifacts/<DS>/sid (a DVC output: its hash must be stable, so no timings in report.json)
    first = {p.relative_to(sid): p.read_bytes() for p in sorted(sid.rglob("*")) if p.is_file()}
    assert len(first) == 6
    assert cli.main(["--params", str(params), "codebook"]) == 0
    assert {p.relative_to(sid): p.read_bytes() for p in sorted(sid.rglob("*")) if p.is_file()} == first
    assert first[sid.joinpath("official/index.json").relative_to(sid)] == (tiny_dataset / "sid_index.json").read_bytes()
    rep = json.loads(report.read_text())
    run = json.loads(report.with_name("codebook_report.run.json").read_text())
    assert set(rep["methods"]) == {"official", "rqvae", "rqkmeans"} and run["command"].startswith("tsrec")
    assert "command" not in rep and run["methods"]["rqvae"]["method"] == "rqvae"  # metrics file: numbers only
    for m in ("rqvae", "rqkmeans"):
        idx = codebook.load_index(sid / m / "index.json")
        assert len(idx) == 60 and len({tuple(v) for v in idx.values()}) == 60  # policy: no collisions left
        e = rep["methods"][m]
        assert e["items_sharing_sid"] == 0 and e["largest_sid_group"] == 1
        assert e["raw_before_policy"]["items_sharing_sid"] >= e["items_reassigned"] > 0  # 60 items on 16 codes per level
        assert set(e["levels"]) == {"a", "b", "c"} and e["levels"]["a"]["codes_available"] == 16


def test_other_seed_changes_index(tmp_path, tiny_dataset):
    params, sid, _ = _setup(tmp_path, tiny_dataset, methods=["rqvae"])
    assert cli.main(["--params", str(params), "codebook"]) == 0
    a = (sid / "rqvae" / "index.json").read_bytes()
    params.write_text(params.read_text().replace('"seed": 3', '"seed": 4'))
    assert cli.main(["--params", str(params), "codebook"]) == 0
    assert (sid / "rqvae" / "index.json").read_bytes() != a


def test_resolve_collisions_nearest_free_code():
    codes = np.array([[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 1]])
    dist = np.array([[.5, .1, .3, .9], [.2, .0, .1, .9], [.4, .3, .2, .1], [.1, .1, .1, .1]])
    out, moved = codebook.resolve_collisions(codes, dist)
    # item 1 is closest to the shared code 1 and keeps it; item 0 -> code 2 (nearest free), item 2 -> code 3
    assert moved == 2 and out[:, 2].tolist() == [2, 1, 3, 1]
    with pytest.raises(TsrecError, match="cannot be resolved"):
        codebook.resolve_collisions(np.zeros((3, 2), dtype=int), np.zeros((3, 2)))


def test_index_stats():
    s = codebook.index_stats([(0, 0, 0), (0, 0, 0), (0, 1, 0), (1, 1, 1)], 4)
    assert s["items_sharing_sid"] == 2 and s["collision_share"] == 0.5 and s["largest_sid_group"] == 2
    assert s["excess_items"] == 1 and s["shared_sids"] == 1 and s["unique_sids"] == 3
    assert s["largest_prefix_group"] == {"a": 3, "ab": 2}
    assert s["levels"]["a"]["codes_used"] == 2 and s["levels"]["a"]["perplexity"] == pytest.approx(1.75, abs=0.01)


@pytest.mark.parametrize("bad,match", [
    ("rows", "59 embedding rows but 60 items"),
    ("nan", "NaN/Inf"),
    ("small", "codebook too small"),
])
def test_bad_input_one_error_no_output(tmp_path, tiny_dataset, capsys, bad, match):
    emb = _emb()
    extra = {}
    if bad == "rows":
        emb = emb[:-1]
    elif bad == "nan":
        emb[7, 2] = np.inf
    else:
        extra = {"codebook_size": 3, "collision": "none"}  # 27 SIDs < 60 items
    params, sid, report = _setup(tmp_path, tiny_dataset, emb, **extra)
    assert cli.main(["--params", str(params), "codebook"]) == 2
    assert match in capsys.readouterr().err
    assert not sid.exists() and not report.exists()


def test_index_path_defaults_to_official(tmp_path):
    data = datasets.DataConfig(out="data")
    assert layout.index_path(codebook_config({"codebook": {}}), data, "X") == Path("data/X/sid_index.json")
    assert layout.index_path(codebook_config({"codebook": {"use": "rqvae"}}), data, "X") == Path(
        "artifacts/X/sid/rqvae/index.json")
    with pytest.raises(TsrecError, match="never be built"):
        codebook_config({"codebook": {"use": "rqvae", "methods": ["rqkmeans"]}})


@pytest.mark.parametrize("ds", ["Industrial_and_Scientific", "Office_Products"])
def test_official_reproduces_published_index(tmp_path, mirror, monkeypatch, ds):
    from tsrec.data import minionerec as data

    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    data.build_dataset(datasets.DataConfig(mirror=str(mirror), datasets=[ds]), ds, tmp_path / "data")
    params = {"seed": 42, "data": {"out": str(tmp_path / "data")},
              "codebook": {"methods": ["official"], "out": str(tmp_path / "a"), "report": str(tmp_path / "r")}}
    rep = codebook.build_dataset(codebook_config(params), 42, ds, ["official"], data_dir=tmp_path / "data" / ds,
                                 emb_path=tmp_path / "none.npy", out_root=tmp_path / "a" / ds / "sid",
                                 report_path=tmp_path / "r" / "report.json", command="test")
    published = json.loads((mirror / f"minionerec/Amazon/index/{ds}.index.json").read_text())
    ours = json.loads((tmp_path / "a" / ds / "sid" / "official" / "index.json").read_text())
    assert ours == published
    e = rep["methods"]["official"]
    assert e["items"] == len(published) and e["unique_sids"] == len({tuple(v) for v in published.values()})
    if ds == "Industrial_and_Scientific":
        # 16 items beyond one per SID (3686 - 3670), spread over groups holding 31 items
        assert e["excess_items"] == 16 and e["items"] == 3686 and e["items_sharing_sid"] == 31
