"""`make push` / `make pull` between two clones (tests/smoke.py copies of the repo, smoke profile): a train stage
reproduced in clone A is pushed to the default DVC remote (.dvc/config `store`: the folder tsrec-dvc-remote
beside the repo); a fresh `git clone` B pulls it, `dvc status` of the stage is clean there, and `tsrec evaluate`
scores the pulled model without training anything."""

import subprocess
import sys
from pathlib import Path

import smoke

STAGE = "train@synthetic-tsrec-42"
RUN = Path("artifacts/synthetic/runs/tsrec/seed42")


def make(copy: Path, *args: str) -> subprocess.CompletedProcess:
    return smoke.sh(copy, "make", "--no-print-directory", *args, f"VENV={Path(sys.executable).parents[1]}")


def test_push_from_one_clone_pull_into_a_clean_clone(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    smoke.make_copy(a)
    smoke.dvc(a, "repro", STAGE)
    smoke.sh(a, "git", "add", "dvc.lock", "results")  # the lock and the git-tracked (cache: false) results
    smoke.sh(a, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "lock")
    make(a, "push", f"T={STAGE}")
    remote = tmp_path / "tsrec-dvc-remote"  # the default remote: ../tsrec-dvc-remote from each clone
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))

    smoke.sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert not (b / RUN).exists() and not (b / "data").exists()
    make(b, "pull", f"T={STAGE}")
    status = smoke.dvc(b, "status", STAGE)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    model = RUN / "final" / "model.safetensors"
    assert (b / model).read_bytes() == (a / model).read_bytes()

    res = smoke.tsrec(b, "evaluate", "--dataset", "synthetic", "--variant", "tsrec", "--seed", "42")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (b / "results" / "synthetic" / "tsrec" / "seed42" / "metrics.json").is_file()
    # nothing was trained: no checkpoints, the pulled model untouched, the train stage still up to date
    assert not (b / RUN / "checkpoints").exists() and (b / model).read_bytes() == (a / model).read_bytes()
    assert "Data and pipelines are up to date" in smoke.dvc(b, "status", STAGE).stdout
