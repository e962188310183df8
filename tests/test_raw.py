import json
import subprocess
import sys

import pytest

from tsrec.data.datasets import load_items, load_split
from tsrec.core.errors import TsrecError
from tsrec.data.raw import RawConfig, build_from_raw, clean_title, k_core

DAY = 86_400
T0 = 1_480_000_000  # 2016-11-24, inside the default window


def write_raw(tmp_path, n_users=12, n_items=8, extra=()):
    meta = [{"asin": f"A{i}", "title": f"Item {i}", "description": [f"desc {i}"], "brand": "B"} for i in range(n_items)]
    meta += [{"asin": "NOTITLE"}, {"asin": "HTML", "title": "<span id='x'>bad</span>"}]
    reviews = []
    for u in range(n_users):
        for j in range(6):  # every user reviews 6 of the 8 items, in a user-specific order
            reviews.append({"reviewerID": f"U{u}", "asin": f"A{(u + j) % n_items}", "unixReviewTime": T0 + (u + 10 * j) * DAY})
    reviews += [{"reviewerID": "U0", "asin": "A0", "unixReviewTime": T0 + 999 * DAY},  # duplicate pair, later
                {"reviewerID": "U0", "asin": "NOTITLE", "unixReviewTime": T0},
                {"reviewerID": "OLD", "asin": "A1", "unixReviewTime": 1_000_000_000},  # out of window
                *extra]
    rp, mp = tmp_path / "reviews.json", tmp_path / "meta.json"
    rp.write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    mp.write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    return rp, mp


def test_preprocessing_rules(tmp_path):
    rp, mp = write_raw(tmp_path)
    card = build_from_raw(rp, mp, tmp_path / "out", "toy", RawConfig())
    out = tmp_path / "out" / "toy"
    items = load_items(out)
    assert set(items.asin) == {f"A{i}" for i in range(8)}  # untitled / HTML titles dropped
    assert card["counts"]["users"] == 12  # OLD user is outside the window
    splits = {s: load_split(out, s) for s in ("train", "valid", "test")}
    total = sum(len(df) for df in splits.values())
    assert total == 12 * 5  # 6 distinct items per user, positions 1..5, duplicate pair ignored
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [48, 6, 6]
    assert all(1 <= len(h) <= 10 for df in splits.values() for h in df.history)
    # per-user histories are time-ordered prefixes: U0 saw A0, A1, ... ten days apart
    u0 = splits["train"][splits["train"].user_id == "U0"]
    asin = dict(zip(items.item_id, items.asin))
    last = u0.iloc[-1]
    assert [asin[i] for i in [*last.history, last.target]] == [f"A{k}" for k in range(len(last.history) + 1)]


def test_global_time_split_orders_targets(tmp_path):
    rp, mp = write_raw(tmp_path)
    build_from_raw(rp, mp, tmp_path / "out", "toy", RawConfig())
    # the latest interactions (user 11, last positions) land in test
    test = load_split(tmp_path / "out" / "toy", "test")
    assert "U11" in set(test.user_id)


def test_k_core_is_iterative():
    inter = [("u1", "i1", 0), ("u1", "i2", 1), ("u2", "i1", 2), ("u2", "i2", 3), ("u3", "i1", 4)]
    assert sorted(k_core(inter, 2)) == sorted(inter[:4])


def test_clean_title():
    assert clean_title("  A &amp; B  ", 300) == "A & B"
    assert clean_title("", 300) is None and clean_title(None, 300) is None
    assert clean_title("x" * 301, 300) is None


def test_malformed_json_line_is_named(tmp_path):
    rp, mp = write_raw(tmp_path)
    rp.write_text(rp.read_text() + '{"reviewerID": "U1", "asin": \n')
    with pytest.raises(TsrecError, match="invalid JSON") as exc:
        build_from_raw(rp, mp, tmp_path / "out", "toy", RawConfig())
    assert exc.value.line == len(rp.read_text().splitlines())
    assert not (tmp_path / "out" / "toy").exists()


def test_wrong_field_type_is_named(tmp_path):
    rp, mp = write_raw(tmp_path, extra=[{"reviewerID": "U1", "asin": "A1", "unixReviewTime": "yesterday"}])
    with pytest.raises(TsrecError) as exc:
        build_from_raw(rp, mp, tmp_path / "out", "toy", RawConfig())
    assert exc.value.field == "unixReviewTime"


def test_cli_from_raw(tmp_path):
    rp, mp = write_raw(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("raw: {k_core: 5}\n")
    res = subprocess.run([sys.executable, "-m", "tsrec", "--params", str(params), "data", "--from-raw", str(rp),
                          str(mp), "--name", "toy", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["items"] == 8
    params.write_text("raw: {split: [0.5, 0.5]}\n")
    res = subprocess.run([sys.executable, "-m", "tsrec", "--params", str(params), "data", "--from-raw", str(rp),
                          str(mp), "--name", "bad", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 2 and "raw" in res.stderr and "split" in res.stderr
