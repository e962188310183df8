"""Sweep workers sharing one study: two `tsrec sweep` processes started at the same moment against a real
PostgreSQL server (initdb + pg_ctl into a temp dir, 127.0.0.1) -> no crash, no parameter set twice, exactly
n complete trials; `tsrec sweep --create` makes the study and runs nothing."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml
from tiny_train import make_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 4


def pg_bin() -> Path | None:
    """The PostgreSQL server binaries: $PG_BIN, Debian's /usr/lib/postgresql/<v>/bin, or initdb on PATH."""
    found = shutil.which("initdb")
    for d in [os.environ.get("PG_BIN"), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
              found and os.path.dirname(found)]:
        if d and all((Path(d) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """URL of a throwaway PostgreSQL server on 127.0.0.1 (trust auth), stopped and removed afterwards."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres): apt-get install postgresql, or set "
                    "PG_BIN to their folder")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="tsrec-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True,  # noqa: E731
                                      timeout=120)
    proc = run(bindir / "initdb", "-D", data, "-U", "tsrec", "--auth=trust", "--no-sync")
    assert proc.returncode == 0, proc.stderr
    proc = run(bindir / "pg_ctl", "-D", data, "-w", "-l", root / "server.log", "-o",
               f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    assert proc.returncode == 0, proc.stderr + (root / "server.log").read_text()
    try:
        yield f"postgresql://tsrec@127.0.0.1:{port}/postgres"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def sweep_params(tmp_path, tiny_dataset, tiny_backbone, storage: str) -> dict:
    p = make_params(tmp_path, tiny_dataset, tiny_backbone)
    p["data"]["datasets"] = [tiny_dataset.name]
    p["sweep"] = {"dataset": tiny_dataset.name, "storage": storage, "n_trials": N_TRIALS, "objective": "valid_loss",
                  "pooling": ["mean", "max"], "weight_range": [0.5, 2.0], "pruner": {"kind": "none"},
                  "train": {"max_steps": 2, "eval_steps": 1}, "out": str(tmp_path / "sweep"),
                  "results": str(tmp_path / "results")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({k: v for k, v in p.items() if k != "_path"}))
    return p


def tsrec(params: dict, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tsrec", "--params", params["_path"], "sweep", *args], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_simultaneous_workers_on_postgresql(postgres, tmp_path, tiny_dataset, tiny_backbone):
    params = sweep_params(tmp_path, tiny_dataset, tiny_backbone, postgres)
    workers = [tsrec(params, cwd=tmp_path) for _ in range(2)]  # a fresh database, started together
    outs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outs):
        assert w.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name="tsrec-sweep-ndcg", storage=postgres)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == N_TRIALS, [(t.number, t.state) for t in trials]
    # a trial asked for while the last ones ran elsewhere is not trained (FAIL, marked), nothing else is left
    assert all(t.user_attrs.get("superfluous") for t in trials if t not in done), [(t.number, t.state) for t in trials]
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(keys)) == len(keys), keys  # no parameter set twice (same sampler seed in both workers)
    assert sum(t.user_attrs.get("enqueued") == "params defaults" for t in done) == 1
    # both workers ran trials (neither crashed nor idled)
    assert len({t.user_attrs["run_dir"] for t in done}) == N_TRIALS


def test_create_only_makes_the_study_and_runs_nothing(tmp_path, tiny_dataset, tiny_backbone):
    storage = f"sqlite:///{tmp_path}/study.db"
    params = sweep_params(tmp_path, tiny_dataset, tiny_backbone, storage)
    proc = tsrec(params, "--create", cwd=tmp_path)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="tsrec-sweep-ndcg", storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.WAITING]  # the enqueued defaults, not run
    assert not (tmp_path / "sweep").exists()
