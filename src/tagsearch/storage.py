"""Where studies live: one Optuna storage URL in, a storage object (and its artifact folder) out.

Supported URLs (see ``studies/README.md``)::

    sqlite:///storage/tagsearch.db        file relative to the working directory (four slashes: absolute)
    postgresql://user:pw@host:5432/db     any SQLAlchemy URL Optuna's RDBStorage takes
    mysql+pymysql://user:pw@host/db
    journal:///storage/tagsearch.log      Optuna JournalFileBackend (a log file; four slashes: absolute)
    redis://host:6379/0                   Optuna JournalRedisBackend (``rediss://`` for TLS)

Relational storages get heartbeats: a trial whose worker died (SIGKILL, lost machine) becomes FAIL
once its heartbeat is older than the grace period, the next worker to start a trial notices, and
``RetryHeartbeatStaleTrialCallback(max_retry=1)`` queues it again with the same parameters. The
interval and grace period come from ``TAGSEARCH_HEARTBEAT`` / ``TAGSEARCH_GRACE`` (seconds).
SQLite is opened with a long lock timeout and in WAL mode so several local workers can share it.
Every failure to open a storage is a ``UserError`` (passwords masked), never a traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import UserError

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
SQLITE_TIMEOUT_SECONDS = 300
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL_SCHEMES = ("journal", "redis", "rediss")
DEFAULT_ARTIFACTS = Path("storage/artifacts")


def scheme(url: str) -> str:
    """``"mysql+pymysql://..."`` → ``"mysql"``; a UserError when ``url`` is not a storage URL."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; expected e.g. sqlite:///storage/tagsearch.db, "
                        f"postgresql://user@host/db, journal:///storage/tagsearch.log or redis://host:6379/0")
    name = url.split("://", 1)[0].split("+", 1)[0].lower()
    if name not in RDB_SCHEMES + JOURNAL_SCHEMES:
        raise UserError(f"storage {masked(url)!r} has unsupported scheme {name!r}; expected one of "
                        f"{', '.join(RDB_SCHEMES + JOURNAL_SCHEMES)}")
    return name


def local_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` or ``journal:///`` URL (None for servers and in-memory)."""
    kind = scheme(url)
    if kind not in ("sqlite", "journal"):
        return None
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if kind == "sqlite" and rest in ("", "/:memory:"):
        return None
    if not rest.startswith("/") or len(rest) < 2:
        raise UserError(f"storage {url!r} has no file path; expected {kind}:///relative/file or "
                        f"{kind}:////absolute/file")
    return Path(rest[1:])


def artifact_dir(url: str) -> Path:
    """Where the FileSystemArtifactStore of this storage lives: ``dir/x.db`` → ``dir/x-artifacts``
    for local files, else ``storage/artifacts``."""
    path = local_path(url)
    return DEFAULT_ARTIFACTS if path is None else path.with_name(f"{path.stem}-artifacts")


def artifact_store(url: str):
    """The ``optuna.artifacts.FileSystemArtifactStore`` for ``url`` (its folder is created)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def open_storage(url: str, create: bool = True):
    """An Optuna storage for ``url``. With ``create=False`` a missing local file is an error
    instead of a new empty storage (for commands that only read studies)."""
    kind = scheme(url)
    path = local_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise UserError(f"storage file {str(path)!r} (from {url!r}) does not exist; "
                            f"run a study first (tagsearch worker/launch) or pass --storage")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind in JOURNAL_SCHEMES:
            return _journal_storage(url, kind, path)
        return _rdb_storage(with_driver(url), kind)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"cannot open storage {masked(url)!r}: its database driver is not installed ({exc}); "
                        f"expected psycopg2/pymysql/redis: pip install 'tagsearch[scale]'") from None
    except Exception as exc:  # driver/network errors of SQLAlchemy, psycopg2, pymysql, redis
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open storage {masked(url)!r}: {type(exc).__name__}: {first_line}") from None


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
    import warnings

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    return JournalStorage(JournalRedisBackend(url))


def _rdb_storage(url: str, kind: str, attempts: int = 3):
    """RDBStorage with heartbeats; retried because workers creating the tables at once can race."""
    import optuna
    import sqlalchemy
    import sqlalchemy.exc

    # isolation_level=None: pysqlite's own transaction handling off, so _begin_immediate can take over.
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS, "isolation_level": None}} \
        if kind == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_settings())
            break
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1 or not _creation_race(exc, kind):
                raise
            time.sleep(0.5 * (attempt + 1))
    if kind == "sqlite":
        if local_path(url) is not None:
            _use_wal(storage.engine)
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
    """RDBStorage keyword arguments for heartbeats and retrying trials of dead workers once."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    interval = _env_seconds("TAGSEARCH_HEARTBEAT", HEARTBEAT_SECONDS)
    grace = _env_seconds("TAGSEARCH_GRACE", GRACE_SECONDS)
    if grace <= interval:
        raise UserError(f"TAGSEARCH_GRACE={grace} must be larger than TAGSEARCH_HEARTBEAT={interval}")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return {"heartbeat_interval": interval, "grace_period": grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}


def _env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name}={text!r} is not a whole number of seconds >= 1")
    return int(text)
