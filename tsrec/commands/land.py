"""land: bring runs finished in another worktree of this repository (a "lane") into this one, without rerunning.

    tsrec land --from ../lane2 Industrial_and_Scientific-sft-43 [RUN ...]
    dvc checkout                      # the cached outputs, from the DVC cache both worktrees share
    dvc repro --single-item report    # the tables

A run uses one thread (``repro.threads``) and DVC runs one stage at a time per workspace, so two worktrees that
share a DVC cache train two runs at once (docs/reproducing.md). For each RUN (a matrix key, ``<DS>-<V>-<N>``) this
copies the lane's ``dvc.lock`` entries of ``train@RUN`` and ``evaluate@RUN`` (``--stage``: others) and the outputs git tracks (``cache: false``:
results/.../seed<N>/), then asks DVC whether the entries hold here: same command, params and dependency hashes,
so only cached outputs may be missing. If not (the lane ran other code or params, or a dependency here differs),
it puts ``dvc.lock`` and the copied outputs back and exits 2, naming each stage and what DVC found changed."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_file

log = logging.getLogger(__name__)
LOCK = "dvc.lock"
DEFAULT_STAGES = ["train", "evaluate"]


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="matrix keys <DS>-<variant>-<seed> (the part after '@')")
    p.add_argument("--from", dest="lane", required=True, help="the lane: another worktree of this repository")
    p.add_argument("--stage", action="append", dest="stages", metavar="STAGE",
                   help="the stages to land per run (default: train and evaluate; e.g. --stage rl --stage evaluate_rl)")
    p.add_argument("--repo", default=".", help="the worktree to land in (default: here)")


def _entries(lock: dict, run: str, stages: list[str], where: Path) -> dict:
    found = {f"{s}@{run}": lock.get("stages", {}).get(f"{s}@{run}") for s in stages}
    if None in found.values():
        raise TsrecError(f"{where / LOCK}: no entry {[n for n, e in found.items() if e is None]} (not run there yet?)")
    return found


def _tracked_outs(repo, names) -> list[str]:
    """The outputs of these stages that git tracks (cache: false), as declared in dvc.yaml here."""
    out = []
    for name in names:
        for stage in repo.stage.collect(name):
            out += [o.def_path for o in stage.outs if not o.use_cache]
    return out


def _problems(status: dict, landed_outs: set[str]) -> dict:
    """What DVC's status says beyond cached outputs of the landed stages being absent from this workspace (as
    outputs, or as dependencies of the next landed stage: evaluate reads train's final/)."""
    bad = {}
    for name, changes in status.items():
        for change in changes:
            kind = next(iter(change)) if isinstance(change, dict) and len(change) == 1 else None
            if kind in ("changed outs", "changed deps") and all(
                    v == "deleted" and (kind == "changed outs" or k in landed_outs) for k, v in change[kind].items()):
                continue
            bad.setdefault(name, []).append(change)
    return bad


def land(repo_dir: Path, lane: Path, runs: list[str], stages: list[str] | None = None) -> list[str]:
    from dvc.repo import Repo
    from dvc.utils.serialize import dump_yaml, load_yaml

    repo_dir, lane = repo_dir.resolve(), lane.resolve()
    if repo_dir == lane:
        raise TsrecError(f"--from {lane}: that is the worktree to land in")
    if not (lane / LOCK).is_file():
        raise TsrecError(f"--from {lane}: no {LOCK} there (not a worktree of this pipeline?)")
    theirs = load_yaml(lane / LOCK)
    entries = {name: e for run in runs for name, e in _entries(theirs, run, stages or DEFAULT_STAGES, lane).items()}
    repo = Repo(str(repo_dir))
    tracked = _tracked_outs(repo, entries)
    missing = [p for p in tracked if not (lane / p).exists()]
    if missing:
        raise TsrecError(f"{lane}: outputs of {sorted(entries)} missing there: {missing}")

    lock_before = (repo_dir / LOCK).read_bytes() if (repo_dir / LOCK).exists() else None
    with tempfile.TemporaryDirectory(dir=repo_dir) as tmp:
        backup = Path(tmp)

        def put_back() -> None:
            for p in tracked:
                if (repo_dir / p).is_dir():
                    shutil.rmtree(repo_dir / p)
                elif (repo_dir / p).exists():
                    (repo_dir / p).unlink()
                if (backup / p).exists():
                    shutil.move(backup / p, repo_dir / p)
            if lock_before is None:
                (repo_dir / LOCK).unlink(missing_ok=True)
            else:
                with atomic_file(repo_dir / LOCK, "wb") as f:
                    f.write(lock_before)

        try:
            for p in tracked:  # keep what is here, to put back on refusal
                if (repo_dir / p).exists():
                    (backup / p).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(repo_dir / p, backup / p)
            ours = load_yaml(repo_dir / LOCK) if lock_before is not None else {"schema": "2.0", "stages": {}}
            ours.setdefault("stages", {}).update(entries)
            new_lock = backup / LOCK
            dump_yaml(new_lock, ours)  # DVC's own lock-file layout
            with atomic_file(repo_dir / LOCK, "wb") as f:
                f.write(new_lock.read_bytes())
            for p in tracked:
                src, dst = lane / p, repo_dir / p
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            landed_outs = {o["path"] for e in entries.values() for o in e.get("outs", [])}
            fresh = Repo(str(repo_dir))  # a new Repo: the first one may hold the lock file it read before the update
            problems = _problems(fresh.status(targets=sorted(entries)), landed_outs)
        except BaseException:  # an error or Ctrl-C half way: leave the worktree as it was
            put_back()
            raise
        if problems:
            put_back()
            lines = "; ".join(f"{name}: {changes}" for name, changes in sorted(problems.items()))
            raise TsrecError(f"{lane / LOCK}: entries do not hold in {repo_dir} (nothing landed): {lines}")
    for name in sorted(entries):
        log.info("landed %s from %s", name, lane)
    return sorted(entries)


def run(args, params) -> None:
    import contextlib

    lane = Path(args.lane).resolve()
    with contextlib.chdir(args.repo):  # DVC resolves stage names against dvc.yaml of the working directory
        land(Path("."), lane, args.runs, args.stages)
