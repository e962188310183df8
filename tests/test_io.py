"""Atomic writes: normal permissions, and a killed writer's temp folders cleaned on the next run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tsrec.core.io import _owner, atomic_dir, atomic_file, clean_stale, write_json

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_get_normal_permissions(tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_file(tmp_path / "b.bin", "wb") as fh:
            fh.write(b"x")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "c.txt").write_text("c")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == file_mode  # was 0600 (mkstemp)
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "out").stat().st_mode & 0o777 == dir_mode  # was 0700 (mkdtemp)


KILLED_WRITER = """
import os, signal, sys
from tsrec.data.synthetic import make_dataset
import tsrec.data.synthetic as syn
real = syn.rows_frame
def die(rows):  # killed while the dataset folder is being written
    os.kill(os.getpid(), signal.SIGKILL)
syn.rows_frame = die
make_dataset(sys.argv[1])
"""


def test_killed_data_stage_temp_folder_cleaned_on_next_run(tmp_path):
    from tsrec.data.synthetic import make_dataset

    out = tmp_path / "data" / "DS"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = list(out.parent.glob(".DS.tmp-*"))
    assert len(left) == 1 and (left[0] / "items.parquet").is_file() and not out.exists()
    live = out.parent / f".DS.tmp-{_owner()}-busy"  # a writer that still runs (this process)
    other = out.parent / ".DS.tmp-1.otherhost-busy"  # another machine's, on a shared disk
    live.mkdir()
    other.mkdir()
    make_dataset(out)  # the next run
    assert (out / "items.parquet").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["DS", live.name, other.name])


def test_clean_stale_leaves_other_files(tmp_path):
    final = tmp_path / "x.json"
    host = _owner().split(".", 1)[1]
    dead = f".x.json.old-999999999.{host}"  # pid above pid_max: dead
    for name in (".x.json.tmp-abc", dead, ".x.jsonl", ".x.json.lock", "x.json"):
        (tmp_path / name).write_text("")
    assert {p.name for p in clean_stale(final)} == {".x.json.tmp-abc", dead}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.lock", ".x.jsonl", "x.json"]
