"""tsrec land: runs made by `dvc repro` in a second git worktree (a lane sharing the DVC cache) come into the main
worktree with their dvc.lock entries and git-tracked outputs, and DVC then finds them up to date there; entries
that do not hold (other code here) are refused and nothing is left changed. Real git and DVC on a two-stage
pipeline shaped like train -> evaluate (a cached model, git-tracked results)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsrec.cli import main

DVC = str(Path(sys.executable).with_name("dvc"))
PIPELINE = """\
stages:
  train:
    matrix:
      run: [a, b]
    cmd: python step.py train ${item.run}
    deps: [step.py, input.txt]
    params: [k]
    outs:
      - out/${item.run}/model.txt
      - results/${item.run}/train.json:
          cache: false
  evaluate:
    matrix:
      run: [a, b]
    cmd: python step.py evaluate ${item.run}
    deps:
      - step.py
      - out/${item.run}/model.txt
    outs:
      - results/${item.run}/metrics.json:
          cache: false
"""
STEP = """\
import json, sys, yaml
from pathlib import Path
kind, run = sys.argv[1:]
if kind == "train":
    k = yaml.safe_load(open("params.yaml"))["k"]
    Path(f"out/{run}").mkdir(parents=True, exist_ok=True)
    Path(f"out/{run}/model.txt").write_text(f"{run} {k} " + open("input.txt").read())
    Path(f"results/{run}").mkdir(parents=True, exist_ok=True)
    Path(f"results/{run}/train.json").write_text(json.dumps({"run": run, "k": k}))
else:
    Path(f"results/{run}/metrics.json").write_text(json.dumps({"score": len(open(f"out/{run}/model.txt").read())}))
"""


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the stages' python
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{args}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return res.stdout


@pytest.fixture
def repo(tmp_path):
    main_wt, lane = tmp_path / "main", tmp_path / "lane"
    main_wt.mkdir()
    for name, text in {"dvc.yaml": PIPELINE, "step.py": STEP, "input.txt": "data\n", "params.yaml": "k: 1\n",
                       ".gitignore": "/out\n"}.items():
        (main_wt / name).write_text(text)
    sh(main_wt, "git", "init", "-q")
    sh(main_wt, DVC, "init", "-q")
    sh(main_wt, "git", "add", "-A")
    sh(main_wt, "git", "commit", "-qm", "pipeline")
    sh(main_wt, "git", "worktree", "add", "-q", "--detach", str(lane), "HEAD")
    sh(lane, DVC, "cache", "dir", "--local", str(main_wt / ".dvc" / "cache"))
    sh(lane, DVC, "repro", "evaluate@a")  # the lane's run; the main worktree ran nothing
    return main_wt, lane


def test_a_lane_run_lands_and_holds(repo):
    main_wt, lane = repo
    assert main(["land", "--from", str(lane), "--repo", str(main_wt), "a"]) == 0
    ours = (main_wt / "dvc.lock").read_text()
    for stage in ("train@a", "evaluate@a"):
        assert stage in ours
    assert "train@b" not in ours
    for f in ("results/a/train.json", "results/a/metrics.json"):
        assert (main_wt / f).read_bytes() == (lane / f).read_bytes()
    assert not (main_wt / "out").exists()  # cached outputs stay in the shared cache until checked out
    sh(main_wt, DVC, "checkout", "train@a")
    assert "up to date" in sh(main_wt, DVC, "status", "train@a", "evaluate@a")
    assert json.loads((main_wt / "results/a/metrics.json").read_text())["score"] > 0
    # landing again changes nothing
    before = (main_wt / "dvc.lock").read_bytes()
    assert main(["land", "--from", str(lane), "--repo", str(main_wt), "a"]) == 0
    assert (main_wt / "dvc.lock").read_bytes() == before


def test_entries_made_with_other_code_are_refused_and_nothing_changes(repo, capsys):
    main_wt, lane = repo
    (main_wt / "results" / "a").mkdir(parents=True)
    (main_wt / "results" / "a" / "metrics.json").write_text('{"score": -1}')  # what was here stays
    with open(main_wt / "step.py", "a") as f:
        f.write("# changed here after the lane ran\n")
    assert main(["land", "--from", str(lane), "--repo", str(main_wt), "a"]) == 2
    err = capsys.readouterr().err
    assert "nothing landed" in err and "step.py" in err and "modified" in err
    assert not (main_wt / "dvc.lock").exists()
    assert (main_wt / "results/a/metrics.json").read_text() == '{"score": -1}'
    assert not (main_wt / "results/a/train.json").exists()


def test_a_run_not_made_in_the_lane_is_named(repo, capsys):
    main_wt, lane = repo
    assert main(["land", "--from", str(lane), "--repo", str(main_wt), "b"]) == 2
    assert "evaluate@b" in capsys.readouterr().err
    assert not (main_wt / "dvc.lock").exists()


def test_landing_into_the_lane_itself_is_refused(repo, capsys):
    _, lane = repo
    assert main(["land", "--from", str(lane), "--repo", str(lane), "a"]) == 2
    assert "the worktree to land in" in capsys.readouterr().err



def test_an_interrupt_half_way_leaves_the_worktree_as_it_was(repo, monkeypatch):
    from dvc.repo import Repo

    main_wt, lane = repo
    (main_wt / "results" / "a").mkdir(parents=True)
    (main_wt / "results" / "a" / "metrics.json").write_text('{"score": -1}')

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Repo, "status", interrupted)
    assert main(["land", "--from", str(lane), "--repo", str(main_wt), "a"]) == 130  # the CLI's Ctrl-C exit
    assert not (main_wt / "dvc.lock").exists()
    assert (main_wt / "results/a/metrics.json").read_text() == '{"score": -1}'
    assert not (main_wt / "results/a/train.json").exists()
    assert sorted(p.name for p in main_wt.iterdir() if p.name.startswith("tmp")) == []
