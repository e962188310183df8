"""tsrec check: expected-metrics regression check on small hand-made metrics files."""

import json

from tsrec.reporting.expected import read_values
from tsrec.cli import main
from tsrec.core.io import write_json
from tsrec.eval.metrics import write_metrics


def _results(root, hr10=0.25, with_sft=True):
    """Metrics files as the stages write them (tsrec.eval.metrics.write_metrics: each with its run record)."""
    write_metrics(root / "DS" / "tsrec" / "metrics.json", {"HR@10": hr10, "NDCG@10": 0.125, "n_rows": 40,
                                                           "wall_time_s": 3.2},
                  {"command": "tsrec evaluate", "HR@10": "not a metric file"})
    if with_sft:
        write_metrics(root / "DS" / "sft" / "metrics.json", {"HR@10": 0.2, "NDCG@10": 0.1, "n_rows": 40},
                      {"command": "tsrec evaluate"})
    write_metrics(root / "DS" / "baselines" / "pop.json",  # and its run record pop.run.json
                  {"HR@10": 0.1, "item/HR@10": 0.09, "ci95": {"HR@10": None}},
                  {"command": "tsrec baseline --model pop", "HR@10": "not a metric file"})
    write_metrics(root / "DS" / "no_sainit" / "seed43" / "metrics.json", {"seed": 43, "HR@10": 0.3},  # per-seed
                  {"command": "tsrec evaluate --seed 43"})


def test_write_then_check_passes(tmp_path, capsys):
    _results(tmp_path / "r")
    exp = tmp_path / "expected.json"
    assert main(["check", "--results", str(tmp_path / "r"), "--expected", str(exp), "--write-expected"]) == 0
    saved = json.loads(exp.read_text())
    assert saved["metrics"]["DS/tsrec/metrics.json"] == {"HR@10": 0.25, "NDCG@10": 0.125, "n_rows": 40}
    assert saved["metrics"]["DS/baselines/pop.json"] == {"HR@10": 0.1, "item/HR@10": 0.09}
    assert "DS/tsrec/run.json" not in saved["metrics"] and "DS/baselines/pop.run.json" not in saved["metrics"]
    assert saved["metrics"]["DS/no_sainit/seed43/metrics.json"] == {"HR@10": 0.3}
    assert "DS/no_sainit/seed43/run.json" not in saved["metrics"]
    capsys.readouterr()
    assert main(["check", "--results", str(tmp_path / "r"), "--expected", str(exp)]) == 0
    assert "check ok: 9 metrics in 4 files" in capsys.readouterr().out


def test_regression_missing_metric_and_higher_value_fail_with_a_table(tmp_path, capsys):
    _results(tmp_path / "r")
    exp = tmp_path / "expected.json"
    assert main(["check", "--results", str(tmp_path / "r"), "--expected", str(exp), "--write-expected"]) == 0
    _results(tmp_path / "worse", hr10=0.2, with_sft=False)
    capsys.readouterr()
    assert main(["check", "--results", str(tmp_path / "worse"), "--expected", str(exp)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["Path", "Metric", "Expected", "Got", "Change", "Status"]
    assert ["DS/tsrec/metrics.json", "HR@10", "0.25", "0.2", "-0.05", "REGRESSION"] in [ln.split() for ln in lines]
    assert ["DS/sft/metrics.json", "HR@10", "0.2", "-", "-", "MISSING", "FILE"] in [ln.split() for ln in lines]
    assert "4 of 9 metrics" in err and "REGRESSION" in err
    # within the tolerance: fine; higher than expected fails unless --allow-better
    _results(tmp_path / "better", hr10=0.3)
    assert main(["check", "--results", str(tmp_path / "better"), "--expected", str(exp), "--tolerance", "0.1"]) == 0
    assert main(["check", "--results", str(tmp_path / "better"), "--expected", str(exp)]) == 2
    assert "CHANGED (higher)" in capsys.readouterr().out
    assert main(["check", "--results", str(tmp_path / "better"), "--expected", str(exp), "--allow-better"]) == 0


def test_bad_expected_file_is_a_one_line_error(tmp_path, capsys):
    exp = tmp_path / "expected.json"
    exp.write_text(json.dumps({"tolerance": -1, "metrics": {"a.json": {"HR@10": 0.1}}}))
    assert main(["check", "--expected", str(exp)]) == 2
    assert "tolerance" in capsys.readouterr().err


def test_metrics_files_are_flat_numbers(tmp_path):
    """Only the top level of a metrics file counts: a ``metrics`` block (the mixed format before run records)
    is not read, and a run record beside a metrics file is never a metrics file."""
    write_json(tmp_path / "old.json", {"metrics": {"HR@10": 0.1}, "command": "x"})
    assert read_values(tmp_path / "old.json") == {}
    write_json(tmp_path / "new.json", {"HR@10": 0.1, "item/NDCG@10": 0.05, "n_rows": 3, "seed": 42, "flag": True})
    assert read_values(tmp_path / "new.json") == {"HR@10": 0.1, "item/NDCG@10": 0.05, "n_rows": 3}


def _seed_run(root, hr10, capability, threads):
    folder = root / "DS" / "tsrec" / "seed42"
    write_json(folder / "metrics.json", {"HR@10": hr10, "n_rows": 40})
    write_json(folder / "run.json", {"command": "tsrec evaluate",
                                     "machine": {"cpu_capability": capability, "threads": threads}})


def test_check_names_the_kernels_of_both_runs(tmp_path, capsys):
    """The expected file records each run's CPU kernel set x threads; a failing check says whether they differ."""
    _seed_run(tmp_path / "r", 0.25, "AVX2", 2)
    exp = tmp_path / "expected.json"
    assert main(["check", "--results", str(tmp_path / "r"), "--expected", str(exp), "--write-expected"]) == 0
    assert json.loads(exp.read_text())["machines"] == {"DS/tsrec/seed42/metrics.json":
                                                       {"cpu_capability": "AVX2", "threads": 2}}
    _seed_run(tmp_path / "avx512", 0.24, "AVX512", 2)
    _seed_run(tmp_path / "same", 0.24, "AVX2", 2)
    capsys.readouterr()
    assert main(["check", "--results", str(tmp_path / "avx512"), "--expected", str(exp)]) == 2
    out = capsys.readouterr().out
    assert "expected made with AVX2 x 2 threads, this run AVX512 x 2 threads" in out
    assert "a mismatch is expected" in out
    assert main(["check", "--results", str(tmp_path / "same"), "--expected", str(exp)]) == 2
    assert "same kernels and threads: a real difference" in capsys.readouterr().out


def test_runs_without_a_record_fall_back_to_the_legacy_file(tmp_path, capsys):
    _seed_run(tmp_path / "r", 0.25, "AVX2", 2)
    exp = tmp_path / "expected.json"
    assert main(["check", "--results", str(tmp_path / "r"), "--expected", str(exp), "--write-expected"]) == 0
    old = tmp_path / "old"
    write_json(old / "DS" / "tsrec" / "seed42" / "metrics.json", {"HR@10": 0.2, "n_rows": 40})
    write_json(old / "legacy_machines.json", {"runs": {"DS/tsrec/seed42/metrics.json":
                                                       {"cpu_capability": "AVX512", "threads": 1}}})
    capsys.readouterr()
    assert main(["check", "--results", str(old), "--expected", str(exp)]) == 2
    assert "this run AVX512 x 1 threads" in capsys.readouterr().out
