import json
import math

import pytest

from tsrec.eval.metrics import KS, MISSING, from_ranks, rank_of, ranks


def test_rank_of_first_match_and_missing():
    assert rank_of(["x", "y", "z", "y"], "y") == 1
    assert rank_of(["x"], "q") == MISSING


def test_hand_computed_case():
    # rows: target at rank 0, rank 2, rank 4, absent
    r = ranks([["t"], ["a", "b", "t"], ["a", "b", "c", "d", "t"], ["a"]], ["t", "t", "t", "t"])
    assert r == [0, 2, 4, MISSING]
    m = from_ranks(r)
    assert m["HR@1"] == 0.25 and m["NDCG@1"] == 0.25
    assert m["HR@3"] == 0.5
    assert m["NDCG@3"] == pytest.approx((1 + 1 / 2) / 4)  # 1/log2(2) + 1/log2(4)
    assert m["HR@5"] == 0.75
    assert m["NDCG@5"] == pytest.approx((1 + 0.5 + 1 / math.log2(6)) / 4)
    assert m["HR@20"] == 0.75
    assert set(m) == {f"{n}@{k}" for k in KS for n in ("HR", "NDCG")}


def test_rank_exactly_k_is_a_miss():
    m = from_ranks([3])
    assert m["HR@3"] == 0.0 and m["NDCG@3"] == 0.0 and m["HR@5"] == 1.0


def test_empty_rows_rejected():
    with pytest.raises(ValueError):
        from_ranks([])


def test_write_metrics_keeps_numbers_only_and_the_run_record_beside(tmp_path):
    from tsrec.eval.metrics import is_run_record, read_with_run, run_path, write_metrics

    path = tmp_path / "DS" / "v" / "metrics.json"
    rec = write_metrics(path, {"HR@10": 0.5, "counts": {"rows": 3, "rate": None}}, {"command": "tsrec x", "p": {"a": 1}})
    assert rec == path.with_name("run.json") and is_run_record(rec) and not is_run_record(path)
    assert json.loads(path.read_text()) == {"HR@10": 0.5, "counts": {"rows": 3, "rate": None}}
    assert read_with_run(path)["command"] == "tsrec x"
    assert run_path(tmp_path / "metrics_valid.json").name == "run_valid.json"
    assert run_path(tmp_path / "Office.json").name == "Office.run.json"
    with pytest.raises(ValueError, match="counts.split is not a number"):
        write_metrics(tmp_path / "m.json", {"counts": {"split": "test"}}, {})
