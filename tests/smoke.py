"""The smoke pipeline: a copy of this repo with profiles/smoke.yaml as params.yaml, reproduced by REAL `dvc repro`.

    python tests/smoke.py [DEST]            run it (default: a fresh temporary folder) and check it
    python tests/smoke.py --write-expected  run it, then write results/smoke/expected.json from its metrics

The copy holds the repo's tracked and untracked-not-ignored files (so uncommitted edits are tested), minus
dvc.lock and the committed real results; it is its own git repo. Stages run `tsrec` from PATH (this
interpreter's bin folder) with PYTHONPATH=<copy>, so the copy's code runs even where the repo is installed
editable. One thread for every library (OMP/MKL): the numbers do not depend on the core count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tsrec.core.config import deep_merge

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "smoke.yaml"
EXPECTED = "results/smoke/expected.json"


def env(copy: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}", PYTHONPATH=str(copy),
             OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    e.pop("TSREC_PARAMS", None)
    return e


def sh(copy: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), cwd=copy, env=env(copy), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}) in {copy}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def dvc(copy: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(copy, sys.executable, "-m", "dvc", *args, check=check)


def tsrec(copy: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return sh(copy, sys.executable, "-m", "tsrec", *args, check=check)


def make_copy(dest: Path, overrides: dict | None = None) -> Path:
    """A git repo at ``dest`` with this repo's files and the smoke params (``overrides`` merged in)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file() or rel == "dvc.lock" or (rel.startswith("results/") and not rel.startswith("results/smoke/")):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    params = deep_merge(yaml.safe_load(PROFILE.read_text()), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=smoke", "-c", "user.email=smoke@localhost", "-c", "commit.gpgsign=false"]
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, *git, "commit", "-qm", "smoke copy")
    return dest


def run(dest: Path, overrides: dict | None = None) -> dict:
    """Copy, then `dvc repro` (every stage); returns wall seconds and the repro log."""
    make_copy(dest, overrides)
    t0 = time.perf_counter()
    res = dvc(dest, "repro")
    return {"seconds": time.perf_counter() - t0, "log": res.stdout + res.stderr}


def main(argv: list[str]) -> int:
    write = "--write-expected" in argv
    rest = [a for a in argv if a != "--write-expected"]
    dest = Path(rest[0]) if rest else Path(tempfile.mkdtemp(prefix="tsrec-smoke-")) / "repo"
    out = run(dest)
    print(f"smoke pipeline: dvc repro in {dest}: {out['seconds']:.0f} s")
    if write:
        res = tsrec(dest, "check", "--results", "results", "--expected", str(REPO / EXPECTED), "--write-expected",
                    "--note", "python tests/smoke.py --write-expected (profiles/smoke.yaml through dvc repro in a "
                    "fresh copy of the repo; fp32, 1 thread)")
        print(res.stdout + res.stderr)
        return res.returncode
    res = tsrec(dest, "check", "--results", "results", "--expected", EXPECTED)
    print(res.stdout + res.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
