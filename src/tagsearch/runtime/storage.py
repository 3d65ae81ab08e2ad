"""Opening a study's storage: a storage URL (or ``location.Location``) in, an Optuna storage out
(SQLite, PostgreSQL/MySQL, a journal file or Redis, a gRPC storage proxy).

Relational storages get Optuna's heartbeats: a trial whose worker died (SIGKILL, lost machine)
becomes FAIL once its heartbeat is older than the grace period, the next worker to start a trial
notices, and it is queued again once with the same parameters (``outcomes.requeue``). The
interval and grace period come from ``TAGSEARCH_HEARTBEAT`` / ``TAGSEARCH_GRACE`` (seconds).
Storages without Optuna heartbeats (journals, the gRPC proxy) get the same recovery from
``heartbeat.py``: a timestamp written as a trial system attribute, read through the storage API.
SQLite is opened with a long lock timeout and in WAL mode so several local workers can share it.
Every failure to open a storage is a ``UserError`` (passwords masked), never a traceback. What
opens comes wrapped for workers (``worker_storage.py``: calls retried through outages).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna

from tagsearch.errors import UserError
from tagsearch.runtime.location import (JOURNAL_SCHEMES, MASK, PROXY_SCHEMES, RDB_SCHEMES, SERVER_SCHEMES,
                                         STORAGE_ENV, Location, proxy_address)
from tagsearch.runtime.outages import Outages
from tagsearch.runtime.worker_storage import worker_storage

SQLITE_TIMEOUT_SECONDS = 300
GRPC_CONNECT_SECONDS = 10


def _check_not_masked(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return
    if password == MASK:
        raise UserError(f"storage {url!r} has its password hidden ({MASK}, as tagsearch writes it into specs and "
                        f"reports); expected the full URL: --storage URL, or the {STORAGE_ENV} environment variable")


def open_storage(url: str | Location, create: bool = True, read_only: bool = False, retry: bool = False):
    """An Optuna storage for ``url``. With ``create=False`` a missing local file is an error
    instead of a new empty storage (for commands that only read studies). ``read_only``: for
    progress polls and the dashboard: SQLite transactions start deferred, so reading never takes
    the write lock the workers queue for (WAL readers do not block writers). ``retry``: calls to a
    database server or proxy ride out outages (``outages.Outages``); opening it still fails at once.
    Every storage but a plain read-only one comes as a ``WorkerStorage``, whose calls a signal
    never interrupts."""
    where = Location.of(url)
    url, kind, path = where.url, where.scheme, where.file
    _check_not_masked(url)
    if path is not None:
        if not create and not path.is_file():
            raise UserError(f"storage file {str(path)!r} (from {url!r}) does not exist; "
                            f"run a study first (tagsearch worker/launch) or pass --storage")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind in JOURNAL_SCHEMES:
            storage = _journal_storage(url, kind, path)
        elif kind in PROXY_SCHEMES:
            storage = _grpc_storage(url)
        else:
            storage = _rdb_storage(with_driver(url), kind, read_only=read_only, local=path is not None)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"cannot open storage {where.masked!r}: its database driver is not installed ({exc}); "
                        f"expected psycopg2/pymysql/redis/grpcio: pip install 'tagsearch[scale]'") from None
    except Exception as exc:  # driver/network errors of SQLAlchemy, psycopg2, pymysql, redis
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open storage {where.masked!r}: {type(exc).__name__}: {first_line}") from None
    retried = retry and kind in SERVER_SCHEMES
    if read_only and not retried:
        return storage  # the dashboard's: optuna-dashboard looks for an RDBStorage
    if retried and kind in RDB_SCHEMES:
        import logging

        # A connection cut by an outage cannot be reset when it goes back to the pool; SQLAlchemy
        # then discards it (the retry opens a new one) but logs the failed ROLLBACK with a traceback.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    # Optuna wraps an RDBStorage in its _CachedStorage (finished trials read once, not per call);
    # a wrapper would hide the RDBStorage from it, so the wrapper wraps the cache, not the storage.
    return worker_storage(storage, Outages() if retried else None)


# SQLAlchemy's default driver for a bare scheme, and the one tagsearch[scale] installs instead.
DRIVERS = {"postgresql://": ("psycopg", "postgresql+psycopg2://", "psycopg2"),
           "mysql://": ("MySQLdb", "mysql+pymysql://", "pymysql")}


def with_driver(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg2://`` (``mysql://`` → ``mysql+pymysql://``) when
    SQLAlchemy's default driver is missing but the one tagsearch installs is present."""
    import importlib.util

    for prefix, (default, replacement, ours) in DRIVERS.items():
        if url.startswith(prefix) and importlib.util.find_spec(default) is None \
                and importlib.util.find_spec(ours) is not None:
            return replacement + url[len(prefix):]
    return url


def _journal_storage(url: str, kind: str, path: Path | None):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if kind == "journal":
            return JournalStorage(JournalFileBackend(str(path)))
        return JournalStorage(JournalRedisBackend(url))


def _grpc_storage(url: str):
    """Optuna's ``GrpcStorageProxy`` on a running ``tagsearch storage-proxy`` (waits briefly for it)."""
    import grpc

    from tagsearch.runtime import proxy_auth

    host, port = proxy_address(url)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        storage = proxy_auth.storage_client(host, port)  # Optuna's GrpcStorageProxy, its calls bearing the token
    try:
        storage.wait_server_ready(timeout=GRPC_CONNECT_SECONDS)
    except (grpc.FutureTimeoutError, ConnectionError):  # Optuna turns the former into the latter
        storage.close()
        raise UserError(f"no storage proxy answers at {url} (waited {GRPC_CONNECT_SECONDS} s); expected a running "
                        f"'tagsearch storage-proxy --storage URL --port {port}' on {host}") from None
    proxy_auth.check_admitted(storage, url)
    return storage


def _rdb_storage(url: str, kind: str, attempts: int = 3, read_only: bool = False, local: bool = True):
    """RDBStorage with heartbeats; retried because workers creating the tables at once can race."""
    import sqlalchemy
    import sqlalchemy.exc

    # isolation_level=None: pysqlite's own transaction handling off, so _begin_immediate can take over.
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS, "isolation_level": None}} \
        if kind == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are experimental in Optuna
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_settings())
            break
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1 or not _creation_race(exc, kind):
                raise
            time.sleep(0.5 * (attempt + 1))
    if kind == "sqlite":
        if local:
            _use_wal(storage.engine)
        if not read_only:
            sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
    return storage


def _creation_race(exc: Exception, kind: str) -> bool:
    """Whether ``exc`` is another worker creating the same tables at the same moment (worth a retry):
    SQLite's lock errors, or a duplicate type/table on a fresh PostgreSQL or MySQL database. An
    unreachable server is not retried."""
    import sqlalchemy.exc

    if kind == "sqlite":
        return True
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)


def _begin_immediate(connection) -> None:
    """Every SQLite transaction takes the write lock up front (waiting up to the timeout). SQLite
    ignores SELECT ... FOR UPDATE, so without this two workers can both read a queued (WAITING)
    trial as free and both run it (optuna/optuna#4002); deferred transactions that upgrade from
    read to write would instead fail at once with "database is locked"."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _use_wal(engine) -> None:
    """Switch a SQLite file to WAL (persistent): faster commits, and readers outside tagsearch (the
    optuna CLI, a notebook) never block the workers. Best effort: a file system without WAL support
    (NFS) keeps the rollback journal."""
    import sqlalchemy.exc

    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sqlalchemy.exc.OperationalError:
        pass


def heartbeat_settings() -> dict:
    """RDBStorage keyword arguments for heartbeats and queueing trials of dead workers again once
    (``outcomes.requeue_lost``, the same rule as ``heartbeat.fail_stale_trials``)."""
    from tagsearch.runtime.heartbeat import heartbeat_timing
    from tagsearch.runtime.outcomes import requeue_lost

    interval, grace = heartbeat_timing()
    return {"heartbeat_interval": interval, "grace_period": grace, "heartbeat_stale_trial_callback": requeue_lost}
