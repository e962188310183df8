import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tsrec.data import minionerec as data

from tsrec.data import datasets
from tsrec.core.errors import TsrecError

EXPECTED = {
    "Industrial_and_Scientific": dict(items=3686, valid=4532, test=4533, sids_unique=3670),
    "Office_Products": dict(items=3459, valid=4866, test=4866, sids_unique=3444),
}
TRAIN_APPROX = {"Industrial_and_Scientific": 10_400, "Office_Products": 9_500}


def write_params(tmp_path, mirror, **extra):
    p = tmp_path / "params.yaml"
    cfg = {"data": {"mirror": str(mirror), "out": str(tmp_path / "data"), **extra}}
    p.write_text(json.dumps(cfg))
    return p


def run_cli(params, *args):
    env = {k: v for k, v in os.environ.items() if k != "TSREC_MIRROR"}  # the params file names the mirror
    return subprocess.run([sys.executable, "-m", "tsrec", "--params", str(params), "data", *args],
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("ds", sorted(EXPECTED))
def test_real_counts_and_reconstruction(tmp_path, mirror, monkeypatch, ds):
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    cfg = datasets.DataConfig(mirror=str(mirror), datasets=[ds])
    card = data.build_dataset(cfg, ds, tmp_path)
    for k, v in EXPECTED[ds].items():
        assert card["counts"][k] == v
    assert card["protocol"] == "reconstructed"
    assert abs(card["counts"]["train"] - TRAIN_APPROX[ds]) < 150
    out = tmp_path / ds
    assert json.loads((out / "card.json").read_text())["counts"] == card["counts"]
    train, valid, test = (datasets.load_split(out, s) for s in ("train", "valid", "test"))
    held = {(u, tuple(h), t) for df in (valid, test) for u, h, t in zip(df.user_id, df.history, df.target)}
    assert not any((u, tuple(h), t) in held for u, h, t in zip(train.user_id, train.history, train.target))
    # every train row of a user is a strict prefix of that user's first held-out history
    first = {}
    for df in (valid, test):
        for u, h in zip(df.user_id, df.history):
            first.setdefault(u, h)
    for u, h, t in zip(train.user_id, train.history, train.target):
        assert first[u][: len(h) + 1] == [*h, t]
    items = datasets.load_items(out)
    assert items.item_id.is_unique and len(items) == EXPECTED[ds]["items"]


def test_cli_counts_both_datasets(tmp_path, mirror):
    res = run_cli(write_params(tmp_path, mirror))
    assert res.returncode == 0, res.stderr
    assert "items=3686" in res.stdout and "items=3459" in res.stdout
    assert (tmp_path / "data" / "Office_Products" / "card.json").is_file()


def test_bad_checksum_fails_without_output(tmp_path, mirror):
    fake = tmp_path / "mirror"
    shutil.copytree(mirror, fake)
    csv = fake / "minionerec/Amazon/test/Industrial_and_Scientific_5_2016-10-2018-11.csv"
    csv.chmod(0o644)
    csv.write_text(csv.read_text()[:-200])  # truncated file
    res = run_cli(write_params(tmp_path, fake), "--dataset", "Industrial_and_Scientific")
    assert res.returncode != 0
    assert "sha256 mismatch" in res.stderr and "Industrial_and_Scientific_5_2016-10-2018-11.csv" in res.stderr
    assert not (tmp_path / "data" / "Industrial_and_Scientific").exists()
    assert not any((tmp_path / "data").glob(".*tmp*")) if (tmp_path / "data").exists() else True


def _csv(tmp_path, rows):
    p = tmp_path / "split.csv"
    p.write_text(",".join(datasets.CSV_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return p


INDEX = {1: ["<a_1>", "<b_1>", "<c_1>"], 2: ["<a_2>", "<b_2>", "<c_2>"]}
GOOD = "U1,\"['t1']\",t2,[1],2,\"['<a_1><b_1><c_1>']\",<a_2><b_2><c_2>"


def test_parse_split_good(tmp_path):
    df = datasets.parse_split(_csv(tmp_path, [GOOD]), {1, 2}, INDEX)
    assert df.history.tolist() == [[1]] and df.target.tolist() == [2]


@pytest.mark.parametrize("row,line,field", [
    ("U1,\"['t1']\",t2,[1],2", 3, None),  # truncated row
    (GOOD.replace("[1],2", "[7],2"), 3, "history_item_id"),  # unknown item id
    (GOOD.replace("['t1']", "['t1'"), 3, "history_item_title"),  # malformed list
    (GOOD.replace("<a_2><b_2><c_2>", "<a_2><b_2><c_9>"), 3, "item_sid"),  # SID/index mismatch
])
def test_parse_split_errors_name_line_and_field(tmp_path, row, line, field):
    with pytest.raises(TsrecError) as exc:
        datasets.parse_split(_csv(tmp_path, [GOOD, row]), {1, 2}, INDEX)
    assert exc.value.line == line and exc.value.field == field
    assert "split.csv" in str(exc.value)


def test_index_must_have_three_tokens(tmp_path):
    p = tmp_path / "x.index.json"
    p.write_text(json.dumps({"0": ["<a_1>", "<b_2>", "<c_3>"], "1": ["<a_1>", "<b_2>"]}))
    with pytest.raises(TsrecError, match="3 tokens") as exc:
        datasets.load_index(p)
    assert exc.value.line == "1"
    p.write_text(json.dumps({"0": ["<a_1>", "<c_2>", "<b_3>"]}))
    with pytest.raises(TsrecError, match="bad SID token"):
        datasets.load_index(p)


def test_malformed_items_json(tmp_path):
    p = tmp_path / "items.json"
    p.write_text('{"0": {"title": "x"},\n "1": ')
    with pytest.raises(TsrecError, match="invalid JSON") as exc:
        datasets.parse_items(p)
    assert exc.value.line == 2


def test_download_path_verifies_against_pins(tmp_path, mirror, monkeypatch):
    """The download code path, served from the mirror through a file:// URL."""
    monkeypatch.setattr(data, "URL_PATTERN", f"file://{mirror}/minionerec/Amazon/{{subpath}}")
    cfg = datasets.DataConfig(source="download", download_cache=str(tmp_path / "dl"))
    rel = "index/Office_Products.index.json"
    path = data.fetch(cfg, rel)
    assert data.sha256_file(path) == datasets.PINNED_SHA256[rel]
    monkeypatch.setitem(datasets.PINNED_SHA256, rel, "0" * 64)
    (tmp_path / "dl").joinpath(cfg.commit, rel).unlink()
    with pytest.raises(TsrecError, match="sha256 mismatch"):
        data.fetch(cfg, rel)
    assert not (tmp_path / "dl" / cfg.commit / rel).exists()


def test_synthetic_dataset_is_canonical(tiny_dataset):
    items = datasets.load_items(tiny_dataset)
    index = datasets.load_index(tiny_dataset / "sid_index.json")
    assert set(index) == set(items.item_id)
    for split in ("train", "valid", "test"):
        df = datasets.load_split(tiny_dataset, split)
        assert list(df.columns) == ["user_id", "history", "target"] and len(df) > 0


def test_output_does_not_depend_on_the_mirror_path(tmp_path, mirror, monkeypatch):
    """Same inputs through two spellings of the mirror path give byte-identical outputs (one DVC hash)."""
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    link = tmp_path / "mirror-link"
    link.symlink_to(Path(mirror).resolve())
    outs = []
    for n, root in enumerate((Path(mirror).resolve(), link)):
        cfg = datasets.DataConfig(mirror=str(root), datasets=["Office_Products"])
        data.build_dataset(cfg, "Office_Products", tmp_path / str(n))
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / str(n) / "Office_Products").iterdir())})
    assert outs[0] == outs[1]


# ---------------------------------------------------------------- a user's own files (no sha pins to lean on)
def test_split_invalid_utf8_is_one_error(tmp_path):
    p = _csv(tmp_path, [GOOD, GOOD])
    p.write_bytes(p.read_bytes().replace(b"t2", b"t\xe9", 2))  # latin-1 byte on data line 3
    with pytest.raises(TsrecError, match="not valid UTF-8") as exc:
        datasets.parse_split(p, {1, 2}, INDEX)
    assert exc.value.line == 2 and exc.value.file == p


def test_split_field_over_csv_limit_is_one_error(tmp_path):
    huge = GOOD.replace("\"['t1']\"", "\"['" + "x" * 200_000 + "']\"")
    with pytest.raises(TsrecError, match="malformed CSV: field larger than field limit") as exc:
        datasets.parse_split(_csv(tmp_path, [GOOD, huge]), {1, 2}, INDEX)
    assert exc.value.line == 3


def test_header_only_split_refused(tmp_path):
    p = tmp_path / "split.csv"
    p.write_text(",".join(datasets.CSV_COLUMNS) + "\n")
    with pytest.raises(TsrecError, match="no data rows"):  # was: accepted, 0 rows
        datasets.parse_split(p, {1, 2}, INDEX)


def test_duplicate_item_key_refused(tmp_path):
    p = tmp_path / "sid_index.json"
    p.write_text('{"0": ["<a_1>", "<b_2>", "<c_3>"], "1": ["<a_1>", "<b_2>", "<c_4>"], '
                 '"0": ["<a_2>", "<b_2>", "<c_3>"]}')
    with pytest.raises(TsrecError, match="key given twice") as exc:
        datasets.load_index(p)  # json alone would keep the last "0"
    assert exc.value.line == "0"
    items = tmp_path / "items.json"
    items.write_text('{"0": {"title": "a"}, "0": {"title": "b"}}')
    with pytest.raises(TsrecError, match="key given twice"):
        datasets.parse_items(items)
