"""Where studies live: one Optuna storage URL in, a storage object (and its artifact folder) out.

Supported URLs (see ``docs/storages.md``)::

    sqlite:///storage/tagsearch.db        file relative to the working directory (four slashes: absolute)
    postgresql://user:pw@host:5432/db     any SQLAlchemy URL Optuna's RDBStorage takes
    mysql+pymysql://user:pw@host/db
    journal:///storage/tagsearch.log      Optuna JournalFileBackend (a log file; four slashes: absolute)
    redis://host:6379/0                   Optuna JournalRedisBackend (``rediss://`` for TLS)
    grpc://host:13000                     a ``tagsearch storage-proxy`` (Optuna's gRPC storage proxy)

Relational storages get Optuna's heartbeats: a trial whose worker died (SIGKILL, lost machine)
becomes FAIL once its heartbeat is older than the grace period, the next worker to start a trial
notices, and it is queued again once with the same parameters (``retries.requeue``). The
interval and grace period come from ``TAGSEARCH_HEARTBEAT`` / ``TAGSEARCH_GRACE`` (seconds).
Storages without Optuna heartbeats (journals, the gRPC proxy) get the same recovery from
``heartbeat.py``: a timestamp written as a trial system attribute, read through the storage API.
SQLite is opened with a long lock timeout and in WAL mode so several local workers can share it.
Every failure to open a storage is a ``UserError`` (passwords masked), never a traceback.
"""

from __future__ import annotations

import copy
import datetime
import functools
import time
import uuid
from pathlib import Path

import optuna

from tagsearch.errors import UserError
from tagsearch.runtime import _optuna
from tagsearch.runtime.interrupts import storage_call
from tagsearch.runtime.outages import Outages, StorageOutage, describe, is_transient, say  # noqa: F401  (StorageOutage: part of this module's API)

CREATE_KEY = "tagsearch:create"  # trial system attributes: the client tokens of a create and a claim
CLAIM_KEY = "tagsearch:claim"
SQLITE_TIMEOUT_SECONDS = 300
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL_SCHEMES = ("journal", "redis", "rediss")
PROXY_SCHEMES = ("grpc",)
GRPC_CONNECT_SECONDS = 10
DEFAULT_ARTIFACTS = Path("storage/artifacts")


def scheme(url: str) -> str:
    """``"mysql+pymysql://..."`` → ``"mysql"``; a UserError when ``url`` is not a storage URL."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; expected e.g. sqlite:///storage/tagsearch.db, "
                        f"postgresql://user@host/db, journal:///storage/tagsearch.log, redis://host:6379/0 "
                        f"or grpc://host:port")
    name = url.split("://", 1)[0].split("+", 1)[0].lower()
    if name not in RDB_SCHEMES + JOURNAL_SCHEMES + PROXY_SCHEMES:
        raise UserError(f"storage {masked(url)!r} has unsupported scheme {name!r}; expected one of "
                        f"{', '.join(RDB_SCHEMES + JOURNAL_SCHEMES + PROXY_SCHEMES)}")
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


def storage_dir(url: str) -> Path:
    """The folder of a local storage file, else storage/: where what belongs beside a study is kept
    (tune's spec of it, the host's encoder embeddings)."""
    path = local_path(url)
    return Path("storage") if path is None else path.parent


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
    """``url`` with any password replaced by ``***`` (SQLAlchemy's own rendering where it parses)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        parsed = None
    if parsed is not None and parsed.password is not None:
        return parsed.render_as_string(hide_password=True)
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


STORAGE_ENV = "TAGSEARCH_STORAGE"  # a storage URL kept off command lines (launch passes one with a password so)
MASK = "***"


def has_secret(url: str) -> bool:
    """Whether ``url`` carries a password (what ``masked`` hides)."""
    return masked(url) != url


def secret_env(url: str) -> dict:
    """The environment that hands ``url`` to a worker instead of its argv, or {} when it has no password."""
    return {STORAGE_ENV: url} if has_secret(url) else {}


def _check_not_masked(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return
    if password == MASK:
        raise UserError(f"storage {url!r} has its password hidden ({MASK}, as tagsearch writes it into specs and "
                        f"reports); expected the full URL: --storage URL, or the {STORAGE_ENV} environment variable")


SERVER_SCHEMES = ("postgresql", "mysql", "redis", "rediss", "grpc")


def open_storage(url: str, create: bool = True, read_only: bool = False, retry: bool = False):
    """An Optuna storage for ``url``. With ``create=False`` a missing local file is an error
    instead of a new empty storage (for commands that only read studies). ``read_only``: for
    progress polls and the dashboard: SQLite transactions start deferred, so reading never takes
    the write lock the workers queue for (WAL readers do not block writers). ``retry``: calls to a
    database server or proxy ride out outages (``outages.Outages``); opening it still fails at once.
    Every storage but a plain read-only one comes as a ``WorkerStorage``, whose calls a signal
    never interrupts."""
    kind = scheme(url)
    _check_not_masked(url)
    path = local_path(url)
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
            storage = _rdb_storage(with_driver(url), kind, read_only=read_only)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"cannot open storage {masked(url)!r}: its database driver is not installed ({exc}); "
                        f"expected psycopg2/pymysql/redis/grpcio: pip install 'tagsearch[scale]'") from None
    except Exception as exc:  # driver/network errors of SQLAlchemy, psycopg2, pymysql, redis
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open storage {masked(url)!r}: {type(exc).__name__}: {first_line}") from None
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
    import warnings

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    return JournalStorage(JournalRedisBackend(url))


def proxy_address(url: str) -> tuple[str, int]:
    """``grpc://host:port`` → ``("host", port)`` (a UserError when either is missing)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.path.strip("/"):
        raise UserError(f"storage {url!r} is not a proxy address; expected grpc://HOST:PORT of a "
                        f"'tagsearch storage-proxy'")
    return host, port


def _grpc_storage(url: str):
    """Optuna's ``GrpcStorageProxy`` on a running ``tagsearch storage-proxy`` (waits briefly for it)."""
    import warnings

    import grpc

    from tagsearch.runtime import proxy_auth

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    host, port = proxy_address(url)
    storage = proxy_auth.storage_client(host, port)  # Optuna's GrpcStorageProxy, its calls bearing the token
    try:
        storage.wait_server_ready(timeout=GRPC_CONNECT_SECONDS)
    except (grpc.FutureTimeoutError, ConnectionError):  # Optuna turns the former into the latter
        storage.close()
        raise UserError(f"no storage proxy answers at {url} (waited {GRPC_CONNECT_SECONDS} s); expected a running "
                        f"'tagsearch storage-proxy --storage URL --port {port}' on {host}") from None
    proxy_auth.check_admitted(storage, url)
    return storage


def _rdb_storage(url: str, kind: str, attempts: int = 3, read_only: bool = False):
    """RDBStorage with heartbeats; retried because workers creating the tables at once can race."""
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
    (``retries.requeue_lost``, the same rule as ``heartbeat.fail_stale_trials``)."""
    import warnings

    from tagsearch.runtime.heartbeat import heartbeat_timing
    from tagsearch.runtime.retries import requeue_lost

    interval, grace = heartbeat_timing()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return {"heartbeat_interval": interval, "grace_period": grace, "heartbeat_stale_trial_callback": requeue_lost}


def optuna_cached(storage):
    """``storage`` as ``optuna.create_study`` would use it (RDBStorage → _CachedStorage)."""
    return optuna.storages.get_storage(storage)


# ---------------------------------------------------------------------------------------------
# The storage a worker uses


class Forwarded:
    """A ``WorkerStorage`` method: the wrapped storage's method of the same name, called through
    ``WorkerStorage.call``."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, storage, owner=None):
        if storage is None:
            return self
        return functools.partial(storage.call, self.name, getattr(storage.inner, self.name))


class WorkerStorage(optuna.storages.BaseStorage):
    """A storage with every call marked for the signal handler (``interrupts.storage_call``: a
    signal never lands inside a write) and, given ``outages``, retried through transient errors: a
    database restart or a network cut of a few seconds costs a pause, not a trial. Idempotent calls
    are simply repeated. The writes that are not are made idempotent: a new trial carries a client
    token (system attribute ``CREATE_KEY``) and a retry first looks for the trial with that token; the
    claim of a queued trial writes a token (``CLAIM_KEY``) before it, and a retry whose trial is already
    RUNNING with our token counts as claimed (an orphan otherwise: Optuna would skip the trial it holds);
    a state change whose first attempt was applied but not acknowledged is recognised
    (UpdateFinishedTrialError on the retry while the trial already has the requested state)."""

    def __init__(self, inner, outages: Outages | None = None):
        self.inner, self.outages = inner, outages

    def __getattr__(self, name):  # engine, url, ... of the wrapped storage
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def call(self, what: str, function, *args, **kwargs):
        if self.outages is not None:
            return self.outages.call(what, function, *args, **kwargs)
        with storage_call():
            return function(*args, **kwargs)

    def create_new_trial(self, study_id, template_trial=None):
        token = uuid.uuid4().hex
        template = (optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING) if template_trial is None
                    else copy.copy(template_trial))
        if template_trial is None:
            template.datetime_start = datetime.datetime.now()
        template.system_attrs = {**template.system_attrs, CREATE_KEY: token}
        attempts = []

        def once():
            if attempts:  # the first attempt may have been applied, its answer lost
                mine = [t._trial_id for t in self.inner.get_all_trials(study_id, deepcopy=False)
                        if t.system_attrs.get(CREATE_KEY) == token]
                if mine:
                    return mine[0]
            attempts.append(1)
            return self.inner.create_new_trial(study_id, template)

        return self.call("create_new_trial", once)

    def set_trial_state_values(self, trial_id, state, values=None):
        attempts, claim = [], state == optuna.trial.TrialState.RUNNING
        token = uuid.uuid4().hex

        def once():
            attempts.append(1)
            if claim:
                if len(attempts) > 1:
                    trial = self.inner.get_trial(trial_id)
                    if trial.state == state:
                        return trial.system_attrs.get(CLAIM_KEY) == token  # ours, or another worker's
                self.inner.set_trial_system_attr(trial_id, CLAIM_KEY, token)
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if len(attempts) > 1 and self.inner.get_trial(trial_id).state == state:
                    return True  # our first attempt was applied; its answer was lost
                raise

        return self.call(f"set_trial_state_values({state.name})", once)

    # Every other public method of optuna.storages.BaseStorage (tests/test_runtime.py checks the list).
    check_trial_is_updatable = Forwarded()
    create_new_study = Forwarded()
    delete_study = Forwarded()
    get_all_studies = Forwarded()
    get_all_trials = Forwarded()
    get_best_trial = Forwarded()
    get_n_trials = Forwarded()
    get_study_directions = Forwarded()
    get_study_id_from_name = Forwarded()
    get_study_name_from_id = Forwarded()
    get_study_system_attrs = Forwarded()
    get_study_user_attrs = Forwarded()
    get_trial = Forwarded()
    get_trial_id_from_study_id_trial_number = Forwarded()
    get_trial_number_from_id = Forwarded()
    get_trial_param = Forwarded()
    get_trial_params = Forwarded()
    get_trial_system_attrs = Forwarded()
    get_trial_user_attrs = Forwarded()
    remove_session = Forwarded()
    set_study_system_attr = Forwarded()
    set_study_user_attr = Forwarded()
    set_trial_intermediate_value = Forwarded()
    set_trial_param = Forwarded()
    set_trial_system_attr = Forwarded()
    set_trial_user_attr = Forwarded()


class WorkerHeartbeatStorage(WorkerStorage, _optuna.ForwardingHeartbeat):
    """``WorkerStorage`` of a storage with Optuna's heartbeats (RDB), which it keeps working."""

    def record_heartbeat(self, trial_id):
        if self.outages is None:
            return self.inner.record_heartbeat(trial_id)
        try:  # Optuna's heartbeat thread: log and go on (an exception would kill the thread)
            self.inner.record_heartbeat(trial_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            say(f"heartbeat of trial id {trial_id} not recorded ({describe(exc)}); next beat in "
                f"{self.inner.get_heartbeat_interval()} s")

    def first_heartbeat(self, trial_id):
        """A trial's first beat: retried through outages like any write, and raising when it cannot be
        written (the trial must not leave the budget lock without one)."""
        return self.call("record_heartbeat", self.inner.record_heartbeat, trial_id)

    def stale_trial_ids(self, study_id):
        return self.call("_get_stale_trial_ids", _optuna.stale_trial_ids, self.inner, study_id)

    def unbeaten_trial_ids(self, study_id):
        return self.call("unbeaten_trial_ids", _optuna.unbeaten_trial_ids, self.inner, study_id)

    def _get_stale_trial_ids(self, study_id):
        """What Optuna's own stale check (``optuna.storages.fail_stale_trials``, in ``Study.optimize``)
        calls before it fails each trial listed: each gets tagsearch's ``fail_reason`` first."""
        from tagsearch.runtime.heartbeat import heartbeat_timing, mark_lost

        stale = self.stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                mark_lost(self, self.get_trial(trial_id), heartbeat_timing()[1])
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished meanwhile; Optuna skips it too
        return stale


def worker_storage(storage, outages: Outages | None = None) -> WorkerStorage:
    """``storage`` (as Optuna caches it) in the wrapper that fits it."""
    storage = optuna_cached(storage)
    kind = WorkerHeartbeatStorage if _optuna.has_heartbeat(storage) else WorkerStorage
    return kind(storage, outages)


def outages_of(storage) -> Outages | None:
    """The ``Outages`` of a storage ``open_storage`` made with ``retry`` (None for others)."""
    return getattr(storage, "outages", None) if isinstance(storage, WorkerStorage) else None
