"""Atomic writes and hashing: no stage leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tsrec.core.errors import TsrecError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


# ---------------------------------------------------------------- one writer per output
_held: dict[tuple[int, Path], int] = {}  # (thread, lock file) -> depth: a writer may take its own lock again


LOCKS = Path(tempfile.gettempdir()) / "tsrec-locks"


def _lock_file(output: Path) -> Path:
    """The lock of ``output``: one file per output path under ``LOCKS``, not beside it (a file inside a DVC
    output folder would change its hash)."""
    return LOCKS / f"{hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, wait_s: float = 0) -> Iterator[None]:
    """Hold the lock of ``output`` (``filelock``, an OS lock released when its holder dies): one writer per
    output. Another process holding it: wait up to ``wait_s``, then a one-line error naming the holder (pid,
    host, command, since)."""
    import filelock

    output = Path(output)
    path = _lock_file(output)
    key = (threading.get_ident(), path)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the machine
        os.chmod(path.parent, 0o1777)
    lock = filelock.FileLock(path, timeout=wait_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
        raise TsrecError(f"is being written by {holder}; wait for it to finish (one writer per output)",
                         file=output) from None
    try:
        with open(path, "w", encoding="utf-8") as fh:  # the holder, for the error above (the lock is the flock)
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                     f"({' '.join(['tsrec', *sys.argv[1:]])[:200]}) [{output}]\n")
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        lock.release()


def _no_space(exc: OSError, final: Path) -> None:
    if exc.errno in NO_SPACE:
        raise TsrecError(f"disk full ({exc.strerror}) while writing it; the previous version is kept: free "
                         "space and rerun", file=final) from exc


# ---------------------------------------------------------------- several files as one unit
_group: contextvars.ContextVar[list | None] = contextvars.ContextVar("tsrec_commit_group", default=None)


@contextlib.contextmanager
def commit_group() -> Iterator[None]:
    """Make every ``atomic_file`` / ``atomic_dir`` inside one unit: each writes its temp as usual, but the
    renames over the outputs wait until the block ends, then happen in order (the last one: what readers
    check, e.g. a run record naming the others' sha256). An error or signal inside removes every temp and
    leaves the previous outputs as they were (a disk filling up half way changes nothing)."""
    if _group.get() is not None:  # nested: part of the outer unit
        yield
        return
    pending: list[tuple[Callable[[], None], Callable[[], None]]] = []
    token = _group.set(pending)
    try:
        yield
    except BaseException:
        for _, discard in pending:
            discard()
        raise
    finally:
        _group.reset(token)
    for commit, _ in pending:
        commit()


def _defer(commit: Callable[[], None], discard: Callable[[], None]) -> bool:
    pending = _group.get()
    if pending is None:
        return False
    pending.append((commit, discard))
    return True


def _swap_dir(tmp: Path, final: Path) -> None:
    for root, dirs, files in os.walk(tmp):  # libraries' own temp files (e.g. 0600 weights) get normal modes
        for name in files:
            _normal_mode(Path(root) / name, is_dir=False)
        for name in dirs:
            _normal_mode(Path(root) / name, is_dir=True)
    with output_lock(final, wait_s=60):  # two writers finishing together: one after the other, none crashes
        old = final.with_name(f".{final.name}.old-{_owner()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            _no_space(exc, final)
        raise
    if not _defer(lambda: _swap_dir(tmp, final), lambda: shutil.rmtree(tmp, ignore_errors=True)):
        _swap_dir(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside ``final`` for writing; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=final.parent)

    def discard() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    try:
        _normal_mode(Path(tmp), is_dir=False)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        discard()
        if isinstance(exc, OSError):
            _no_space(exc, final)
        raise
    if not _defer(lambda: os.replace(tmp, final), discard):
        os.replace(tmp, final)


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


# ---------------------------------------------------------------- reading a model folder
def load_or_explain(loader, folder: Path, what: str, stage: str, **kwargs):
    """``loader(folder, **kwargs)`` (a Hugging Face ``from_pretrained``); a missing or corrupt file (e.g. a
    truncated model.safetensors) is one error naming the file and the stage that rewrites it."""
    folder = Path(folder)
    if what == "tokenizer" and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise TsrecError(f"no tokenizer files (tokenizer.json, tokenizer_config.json); rerun `{stage}`", file=folder)
    try:
        return loader(folder, **kwargs)
    except Exception as exc:
        weights = sorted(folder.glob("*.safetensors")) if what == "model" else []
        names = [f.name for f in weights] or ([] if what == "model" else
                                              [f.name for f in folder.glob("tokenizer*")] or ["tokenizer.json"])
        bad = next((f for f in weights if not _safetensors_ok(f)), None)
        where = bad or (folder / names[0] if names else folder)
        raise TsrecError(f"cannot load the {what} ({'truncated or corrupt' if bad else type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); rerun `{stage}`", file=where) from None


def _safetensors_ok(path: Path) -> bool:
    """True if every tensor of a safetensors file is within the file (a truncated copy fails)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False
