"""Issue 41, reliability round 2: each case of the issue, through the production code (tsrec CLI, stages'
writers and readers). Disk full is simulated by an OSError(ENOSPC) where the bytes are written; SIGINT by a
real signal to a `tsrec evaluate` subprocess."""

import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_evaluate import tiny_eval_model  # noqa: F401  (fixture)

from tsrec.eval import metrics
from tsrec.reporting.expected import read_values
from tsrec.cli import main
from tsrec.core.config import load_params
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, sha256_file
from tsrec.eval.metrics import write_metrics

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"{n}@{k}" for k in (1, 3, 5, 10, 20) for n in ("HR", "NDCG")]


def _metrics(value=0.25, **over):
    return {**{k: value for k in KEYS}, "n_rows": 40, **over}


def _nan_file(root, value):
    """A metrics file holding ``value`` (NaN, Inf, 1.5) as a stage gone wrong could (json writes NaN)."""
    path = root / "DS" / "tsrec" / "seed42" / "metrics.json"
    write_metrics(path, _metrics(), {"command": "tsrec evaluate"})
    path.write_text(json.dumps(_metrics(**{"HR@10": value})))
    rec = metrics.run_path(path)
    if "metrics_sha256" in json.loads(rec.read_text()):  # the record names the file it was committed with
        rec.write_text(json.dumps({"command": "tsrec evaluate", "metrics_sha256": sha256_file(path)}))
    return path


# ---------------------------------------------------------------- 1. NaN / Inf / impossible metrics
@pytest.mark.parametrize("value", [math.nan, math.inf, 1.5, -0.1])
def test_write_metrics_refuses_nan_inf_and_out_of_range(tmp_path, value):
    with pytest.raises(ValueError, match="HR@10"):
        write_metrics(tmp_path / "m.json", _metrics(**{"HR@10": value}), {"command": "x"})
    with pytest.raises(ValueError, match="n_rows"):
        write_metrics(tmp_path / "m.json", _metrics(n_rows=-1), {"command": "x"})
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.run.json").exists()


@pytest.mark.parametrize("value", [math.nan, math.inf, 1.5])
def test_check_refuses_invalid_metrics_whatever_the_flags(tmp_path, capsys, value):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_metrics(good / "DS" / "tsrec" / "seed42" / "metrics.json", _metrics(), {"command": "tsrec evaluate"})
    exp = tmp_path / "expected.json"
    assert main(["check", "--results", str(good), "--expected", str(exp), "--write-expected"]) == 0
    _nan_file(bad, value)
    for flags in ([], ["--allow-better"], ["--tolerance", "10"], ["--allow-better", "--tolerance", "10"]):
        capsys.readouterr()
        assert main(["check", "--results", str(bad), "--expected", str(exp), *flags]) == 2, flags
        assert "INVALID" in capsys.readouterr().out
    # --write-expected does not write it into an expected file
    assert main(["check", "--results", str(bad), "--expected", str(tmp_path / "e2.json"), "--write-expected"]) == 2
    assert not (tmp_path / "e2.json").exists() and "HR@10" in capsys.readouterr().err
    # nor is an expected file holding one accepted
    exp.write_text(json.dumps({"tolerance": 0, "metrics": {"DS/tsrec/seed42/metrics.json": {"HR@10": value}}}))
    assert main(["check", "--results", str(good), "--expected", str(exp)]) == 2
    assert "invalid expected value" in capsys.readouterr().err


@pytest.mark.parametrize("tol", ["nan", "-1", "inf"])
def test_check_cli_tolerance_is_validated(tmp_path, capsys, tol):
    write_metrics(tmp_path / "r" / "DS" / "v" / "seed1" / "metrics.json", _metrics(), {"command": "x"})
    with pytest.raises(SystemExit) as exc:
        main(["check", "--results", str(tmp_path / "r"), "--expected", str(tmp_path / "e.json"), "--write-expected",
              "--tolerance", tol])
    assert exc.value.code == 2 and "--tolerance" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_report_refuses_to_table_nan(tmp_path, capsys):
    root = tmp_path / "results"
    _nan_file(root, math.nan)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "data": {"datasets": ["DS"]}, "variants": {"tsrec": {}},
                                      "report": {"results": str(root), "out": str(tmp_path / "tables.md")}}))
    assert main(["--params", str(params), "report"]) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and "HR@10" in err and "not a finite number" in err
    assert not (tmp_path / "tables.md").exists()


# ---------------------------------------------------------------- 2, 3. params.yaml
def test_duplicate_keys_refused_at_any_depth(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 1\ntrain:\n  max_steps: 30\n  lr: 0.001\nevaluate:\n  beams: 20\ntrain:\n  lr: 0.01\n")
    with pytest.raises(ParamError) as exc:
        load_params(p)
    assert str(p) in str(exc.value) and "'train' given twice (lines 2 and 7)" in str(exc.value)
    p.write_text("seed: 1\ntrain:\n  max_steps: 30\n  lr: 0.001\n  max_steps: 3200\n")
    with pytest.raises(ParamError, match=r"'max_steps' given twice \(lines 3 and 5\)"):
        load_params(p)
    p.write_text("seed: 1\nvariants:\n  a: {tasks: {tsalign: {weight: 1, weight: 2}}}\n")
    with pytest.raises(ParamError, match="'weight' given twice"):
        load_params(p)


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n# seed: 42\n"])
def test_empty_or_comment_only_params_refused(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ParamError, match="empty"):
        load_params(p)


def test_non_utf8_params_is_one_line(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_bytes(b"seed: 42\ndata:\n  out: caf\xe9\n")
    assert main(["--params", str(p), "report"]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "not valid UTF-8" in err and "Traceback" not in err


def test_train_datasets_checked_against_data_datasets_up_front(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seed": 1, "data": {"datasets": ["A", "B"]},
                                 "train": {"datasets": ["A", "Typo"], "variants": ["tsrec"], "seeds": [1]}}))
    with pytest.raises(ParamError, match=r"\['Typo'\] are not in data.datasets"):
        load_params(p)


def test_bad_cli_flag_is_not_blamed_on_params(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 42\nevaluate: {beams: 20}\n")
    assert main(["--params", str(p), "evaluate", "--dataset", "DS", "--variant", "v", "--beams", "5"]) == 2
    err = capsys.readouterr().err
    assert "--beams 5" in err and str(p) not in err


# ---------------------------------------------------------------- helpers: a trained run, evaluated
def _trained_run(tmp_path, tiny_dataset, tiny_eval_model):  # noqa: F811
    from tsrec.model.runs import save_final

    model, tok, _ = tiny_eval_model
    index = tiny_dataset / "sid_index.json"
    run = tmp_path / "runs" / "v" / "seed42"
    save_final(model, tok, {"variant": "v", "seed": 42, "index_sha256": sha256_file(index), "index_path": str(index)},
               run / "final")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "evaluate": {"beams": 20, "batch_size": 8}}))
    return run, params


def _evaluate_args(tmp_path, run, params, data_dir, n=5):
    return ["--params", str(params), "evaluate", "--dataset", "DS", "--variant", "v", "--run-dir", str(run),
            "--data-dir", str(data_dir), "--subsample", str(n), "--results", str(tmp_path / "results"),
            "--artifacts", str(tmp_path / "artifacts")]


def _outputs(tmp_path):
    res, art = tmp_path / "results/DS/v/seed42", tmp_path / "artifacts/DS/eval/v/seed42"
    return [res / "metrics.json", res / "run.json", res / "ranks.parquet", art / "ranks.parquet"]


def _snapshot(tmp_path):
    return {p: p.read_bytes() for p in _outputs(tmp_path)}


def _consistent(tmp_path):
    from tsrec.model.scoring import check_ranks

    mfile, _, slim, full = _outputs(tmp_path)
    check_ranks(slim, mfile)
    check_ranks(full, mfile, key="ranks")
    ranks = pd.read_parquet(slim)["rank"].tolist()
    assert json.loads(mfile.read_text())["n_rows"] == len(ranks)
    assert read_values(mfile)["HR@20"] == metrics.from_ranks(ranks)["HR@20"]


# ---------------------------------------------------------------- 4. one writer per output
def test_second_train_of_a_run_is_refused_naming_the_holder(tmp_path, tiny_dataset, tiny_backbone, capsys):
    import filelock
    from tiny_train import make_params

    from tsrec.core.io import _lock_file

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=1)
    run = tmp_path / "artifacts" / "tiny" / "runs" / "sft" / "seed5"
    lock = _lock_file(run)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = filelock.FileLock(lock, timeout=0)
    done = threading.Event()

    def hold():  # another writer of the same run (its own open file: a second flock)
        with holder:
            lock.write_text("pid 4242 on otherbox since 2026-01-01 (tsrec train ...)\n")
            done.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.5)
    try:
        rc = main(["--params", params["_path"], "train", "--dataset", "tiny", "--variant", "sft", "--seed", "5",
                   "--results", str(tmp_path / "results")])
    finally:
        done.set()
        t.join()
    err = capsys.readouterr().err
    assert rc == 2 and "is being written by pid 4242 on otherbox" in err and str(run) in err
    assert not (run / "plots" / "train.csv").exists()  # it wrote nothing


def test_simultaneous_commits_never_mix(tmp_path):
    """Many writers of one evaluate output at once: each either commits whole or is refused; what is left is
    one writer's complete set (metrics, run record and both ranks agree)."""
    from tsrec.model.scoring import commit_outputs

    mfile, _, slim, full = _outputs(tmp_path)
    go = threading.Barrier(8)
    outcome = []

    def writer(i):
        ranks = [i % 20] * (10 + i) + [-1] * 3
        df = pd.DataFrame({"row": range(len(ranks)), "target": 1, "rank": ranks, "ranked_sids": [["x"]] * len(ranks)})
        go.wait()
        try:
            commit_outputs(mfile, {"seed": 42, **metrics.from_ranks(ranks), "n_rows": len(ranks)},
                           {"command": f"writer {i}"}, full.parent, "ranks.parquet", df)
            outcome.append("ok")
        except TsrecError as exc:
            assert "is being written by" in str(exc)
            outcome.append("refused")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcome) == 8 and "ok" in outcome
    _consistent(tmp_path)
    assert not [p for p in (*mfile.parent.iterdir(), *full.parent.parent.iterdir()) if ".tmp-" in p.name]
    assert sorted(p.name for p in full.parent.iterdir()) == ["ranks.parquet"]  # no lock file inside an output


def test_two_atomic_dirs_finishing_together_both_succeed(tmp_path, monkeypatch):
    """The old swap (exists? -> move away -> move in) let two writers finishing together crash one
    (FileNotFoundError) and leave its temp folder; here both rename steps meet at a barrier."""
    final = tmp_path / "out"
    final.mkdir()
    (final / "f").write_text("0")
    meet = threading.Barrier(2, timeout=2)
    real = os.replace
    errors = []

    def replace(src, dst):
        if Path(dst).name.startswith(".out.old") or Path(dst) == final:
            try:
                meet.wait()
            except threading.BrokenBarrierError:
                pass  # the other writer waits for the lock: no meeting
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)

    def writer(i):
        try:
            with atomic_dir(final) as tmp:
                (tmp / "f").write_text(str(i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and (final / "f").read_text() in ("1", "2")
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


# ---------------------------------------------------------------- 5. paired needs the run record
def test_paired_refuses_ranks_without_their_run_record(tmp_path, capsys):
    from tsrec.data.layout import write_row_ranks

    res = tmp_path / "results"
    for v in ("a", "b"):
        d = res / "DS" / v / "seed42"
        ranks = pd.DataFrame({"row": range(6), "target": 3, "rank": [0, 1, -1, 2, 0, -1] if v == "a" else [-1] * 6})
        write_metrics(d / "metrics.json", {"seed": 42, **metrics.from_ranks(ranks["rank"].tolist())},
                      {"command": "tsrec evaluate", "row_ranks": write_row_ranks(d / "ranks.parquet", ranks)})
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\n")
    args = ["--params", str(params), "paired", "--dataset", "DS", "--variant", "a", "--other", "b", "--results", str(res)]
    assert main(args) == 0
    (res / "DS/a/seed42/run.json").unlink()
    edited = pd.read_parquet(res / "DS/a/seed42/ranks.parquet").assign(rank=-1)
    edited.to_parquet(res / "DS/a/seed42/ranks.parquet", index=False)
    capsys.readouterr()
    assert main(args) == 2
    assert "no run record run.json" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. corrupt / missing inputs: one line
def _truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[:int(len(blob) * keep)])


def _one_line(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.startswith("tsrec ")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def test_truncated_run_weights_named(tmp_path, tiny_dataset, tiny_eval_model, capsys):  # noqa: F811
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    _truncate(run / "final" / "model.safetensors")
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset)) == 2
    _one_line(capsys.readouterr().err, run / "final" / "model.safetensors", "truncated", "tsrec train")


def test_missing_tokenizer_named(tmp_path, tiny_dataset, tiny_eval_model, capsys):  # noqa: F811
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    for f in (run / "final").glob("tokenizer*"):
        f.unlink()
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset)) == 2
    _one_line(capsys.readouterr().err, run / "final", "tokenizer")


def test_truncated_backbone_weights_named(tmp_path, tiny_backbone):
    import shutil

    from tsrec.lm.llm import load_backbone

    bb = tmp_path / "bb"
    shutil.copytree(tiny_backbone, bb)
    _truncate(next(bb.glob("*.safetensors")))
    with pytest.raises(TsrecError, match="truncated") as exc:
        load_backbone(bb)
    assert str(next(bb.glob("*.safetensors"))) in str(exc.value) and "tsrec backbone" in str(exc.value)


def test_truncated_split_parquet_named(tmp_path, tiny_dataset, tiny_eval_model, capsys):  # noqa: F811
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    _truncate(tiny_dataset / "test.parquet")
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset)) == 2
    _one_line(capsys.readouterr().err, tiny_dataset / "test.parquet", "tsrec data")


def test_missing_and_truncated_sid_index(tmp_path, tiny_dataset, tiny_eval_model, capsys):  # noqa: F811
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    index = tiny_dataset / "sid_index.json"
    _truncate(index, 0.7)
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset)) == 2
    line = _one_line(capsys.readouterr().err, index, "invalid JSON")
    assert "another SID index" not in line
    index.unlink()
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset)) == 2
    _one_line(capsys.readouterr().err, "sid_index.json", "SID index not found")


# ---------------------------------------------------------------- 6, 7. disk full; SIGINT
def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_in_evaluate_keeps_the_previous_outputs(tmp_path, tiny_dataset, tiny_eval_model, capsys,  # noqa: F811
                                                         monkeypatch):
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset, n=5)) == 0
    before = _snapshot(tmp_path)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset, n=12)) == 2
    _one_line(capsys.readouterr().err, "disk full")
    assert _snapshot(tmp_path) == before  # metrics, run record and both ranks: the previous set, whole
    monkeypatch.undo()
    _consistent(tmp_path)


def test_disk_full_in_report_leaves_tables_that_agree(tmp_path, capsys, monkeypatch):
    root = tmp_path / "results"
    write_metrics(root / "DS" / "tsrec" / "seed42" / "metrics.json", {"seed": 42, **_metrics(0.25)}, {"command": "x"})
    params = tmp_path / "params.yaml"
    out = tmp_path / "tables.md"
    params.write_text(yaml.safe_dump({"seed": 42, "data": {"datasets": ["DS"]}, "variants": {"tsrec": {}},
                                      "report": {"results": str(root), "out": str(out)}}))
    assert main(["--params", str(params), "report"]) == 0
    before = {p: p.read_bytes() for p in (out, root / "DS" / "table.csv")}
    write_metrics(root / "DS" / "tsrec" / "seed42" / "metrics.json", {"seed": 42, **_metrics(0.5)}, {"command": "x"})
    real = os.fsync

    def fsync(fd):  # the disk fills up while tables.md is written (after table.csv)
        if ".tables.md.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            _enospc()
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["--params", str(params), "report"]) == 2
    _one_line(capsys.readouterr().err, out, "disk full")
    assert {p: p.read_bytes() for p in before} == before


def test_disk_full_in_data_keeps_the_previous_dataset(tmp_path, capsys, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "data": {"source": "synthetic", "datasets": ["DS"],
                                                          "out": str(tmp_path / "data")}}))
    assert main(["--params", str(params), "data"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "data" / "DS").iterdir()}
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    assert main(["--params", str(params), "data"]) == 2
    _one_line(capsys.readouterr().err, tmp_path / "data" / "DS", "disk full")
    assert {p: p.read_bytes() for p in (tmp_path / "data" / "DS").iterdir()} == before


SLOW_WRITER = """
import pathlib, signal, sys, time
import pandas as pd
from tsrec.cli import main
# a shell without job control starts background jobs with SIGINT ignored, and Python then keeps it ignored: give
# this process Python's own handler, whatever launched the test suite
signal.signal(signal.SIGINT, signal.default_int_handler)
marker = pathlib.Path(sys.argv[1])
def slow(self, *a, **kw):  # the outputs are being written when the signal comes
    marker.touch()
    for _ in range(1200):  # short sleeps: Python handles a signal that another (OpenMP) thread received
        time.sleep(0.1)    # at the next one, where one long sleep would run out first
pd.DataFrame.to_parquet = slow
sys.exit(main(sys.argv[2:]))
"""


def test_sigint_exits_130_and_keeps_the_previous_outputs(tmp_path, tiny_dataset, tiny_eval_model):  # noqa: F811
    run, params = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    assert main(_evaluate_args(tmp_path, run, params, tiny_dataset, n=5)) == 0
    before = _snapshot(tmp_path)
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(marker),
                             *_evaluate_args(tmp_path, run, params, tiny_dataset, n=12)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    _one_line(err, "interrupted")
    assert _snapshot(tmp_path) == before
    _consistent(tmp_path)


# ---------------------------------------------------------------- 8. smaller
def test_model_weights_are_written_0644_like_their_neighbours(tmp_path, tiny_dataset, tiny_eval_model):  # noqa: F811
    old = os.umask(0o022)
    try:
        run, _ = _trained_run(tmp_path, tiny_dataset, tiny_eval_model)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (run / "final").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_beams_above_the_number_of_sids_warned(tmp_path, tiny_dataset, tiny_eval_model, caplog):  # noqa: F811
    _, _, model_dir = tiny_eval_model
    few = tmp_path / "few.json"  # 60 items on 4 SIDs
    few.write_text(json.dumps({str(i): ["<a_1>", "<b_2>", f"<c_{i % 4}>"] for i in range(60)}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 42, "evaluate": {"beams": 20, "batch_size": 8}}))
    assert main(["--params", str(params), "evaluate", "--dataset", "DS", "--variant", "v", "--model-dir",
                 str(model_dir), "--index", str(few), "--data-dir", str(tiny_dataset), "--subsample", "3",
                 "--results", str(tmp_path / "r"), "--artifacts", str(tmp_path / "a")]) == 0
    assert any("beams 20 > the 4 SIDs" in r.getMessage() for r in caplog.records)
