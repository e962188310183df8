"""Atomic writes and hashing: no stage leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp make 0600/0700; outputs get what open()/mkdir() would give (0666/0777 less umask)."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> str:
    """``<pid>.<host>``: names the writer of a temp file, so that only a dead writer's leftovers are removed."""
    return f"{os.getpid()}.{''.join(c for c in socket.gethostname() if c.isalnum())[:32] or 'host'}"


def clean_stale(final: Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>.<host>-*`` / ``.<name>.old-<pid>.<host>`` beside ``final`` whose writer
    (on this host) is dead: what a killed stage left behind. Names without an owner predate owners."""
    removed = []
    host = _owner().split(".", 1)[1]
    for p in final.parent.glob(f".{final.name}.*"):
        kind, _, rest = p.name[len(final.name) + 2:].partition("-")
        pid, _, owner_host = rest.split("-", 1)[0].partition(".")
        if kind not in ("tmp", "old"):
            continue
        if owner_host and (owner_host != host or not pid.isdigit() or _alive(int(pid))):
            continue  # another host's (a shared disk), or its writer still runs
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success replace ``final`` with it, on error delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=final.parent))
    _normal_mode(tmp, is_dir=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{_owner()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside ``final`` for writing; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=final.parent)
    try:
        _normal_mode(Path(tmp), is_dir=False)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def claim_checkpoints(ckpt_dir: Path, fingerprint: str, *, also: tuple[Path, ...] = ()) -> bool:
    """Make ``ckpt_dir`` hold only checkpoints of the run with ``fingerprint``: those of another configuration
    (or without a fingerprint) are removed, with the ``also`` folders (e.g. their curves). True if removed."""
    import logging

    fp_file = Path(ckpt_dir) / "fingerprint.json"
    stale = ckpt_dir.exists() and (not fp_file.exists() or json.loads(fp_file.read_text()) != fingerprint)
    if stale:
        logging.getLogger(__name__).warning("%s holds checkpoints of another configuration: removing them", ckpt_dir)
        shutil.rmtree(ckpt_dir)
        for extra in also:
            shutil.rmtree(extra, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, fingerprint)
    return stale
