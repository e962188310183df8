import json

import pytest

from tsrec.errors import TsrecError
from tsrec.metrics import read_metrics
from tsrec.report import dataset_table, gain_line, render


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_table_marks_missing_rows_not_run(tmp_path):
    _write(tmp_path / "DS/baselines/pop.json", {"metrics": {"HR@10": 0.01, "NDCG@10": 0.005}, "command": "x"})
    _write(tmp_path / "DS/tsrec/metrics.json", {"HR@10": 0.02, "NDCG@10": 0.01})
    df = dataset_table(tmp_path, "DS", [10])
    pop = df[df.method == "Pop"].iloc[0]
    assert pop["NDCG@10"] == 0.005 and pop.source.endswith("pop.json")
    assert df[df.method == "SASRec"].iloc[0].source == "not run"
    text = render(df)
    assert "not run" in text and "0.0050" in text
    assert gain_line(df) == "TS-Rec vs best other method (Pop) on NDCG@10: 0.0100 vs 0.0050, +100.0%"
    assert gain_line(df, versus="SASRec") is None


def test_bad_metrics_files(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{")
    with pytest.raises(TsrecError, match="invalid JSON"):
        read_metrics(p)
    p.write_text(json.dumps({"loss": 1}))
    with pytest.raises(TsrecError, match="no HR@K"):
        read_metrics(p)
