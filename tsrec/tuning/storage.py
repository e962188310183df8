"""The sweep's Optuna RDB storage: its URL (secrets from the environment, masked in logs and files), the storage
with heartbeat retries, and the lock that serialises creating the study across workers."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tsrec.core.errors import ParamError
from tsrec.core.io import sha256_json
from tsrec.tuning.config import SweepConfig


def masked(url: str) -> str:
    """The storage URL without its password, for logs and result files."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def storage_url(cfg: SweepConfig, file: str | None = None) -> str:
    """The storage URL: ``storage``, or the value of ``$<storage_env>``; ``$<password_env>`` is put in as its
    password. Secrets stay out of params.yaml and dvc.lock; only the variable names are there."""
    import os

    from sqlalchemy.engine import make_url

    url = cfg.storage
    for key, name in (("storage_env", cfg.storage_env), ("password_env", cfg.password_env)):
        if name and not os.environ.get(name):
            raise ParamError(f"environment variable {name!r} is not set", file=file, field=f"sweep.{key}")
    if cfg.storage_env:
        url = os.environ[cfg.storage_env]
    if cfg.password_env:
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError: the URL itself is never echoed
            raise ParamError(f"storage URL does not parse ({type(exc).__name__})", file=file,
                             field="sweep.storage") from None
        url = parsed.set(password=os.environ[cfg.password_env]).render_as_string(hide_password=False)
    return url


def make_storage(cfg: SweepConfig, url: str | None = None):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    url = url or storage_url(cfg)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=cfg.heartbeat_s, grace_period=2 * cfg.heartbeat_s,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


LOCK_KEY = 0x7573_7265_63  # pg_advisory_lock key of study creation ("tsrec")


@contextlib.contextmanager
def creation_lock(url: str):
    """Serialise creating the storage schema and the study across workers: two workers creating them at the same
    moment on a fresh PostgreSQL database crash one (``UniqueViolation ... CREATE TYPE studydirection``,
    optuna/optuna#1092). PostgreSQL: a session advisory lock; sqlite (one machine): a file lock in the temp dir."""
    import tempfile

    from filelock import FileLock
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        finally:
            engine.dispose()
    elif backend == "sqlite" and parsed.database:
        key = sha256_json(str(Path(parsed.database).resolve()))[:16]
        with FileLock(Path(tempfile.gettempdir()) / f"tsrec-sweep-{key}.lock", timeout=600):
            yield
    else:  # other databases: create the study first with `tsrec sweep --create`
        yield
