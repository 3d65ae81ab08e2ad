"""The study's budget lock: "count the study's trials, then create one" (and creating a study with
its [defaults] trial) as one step among all workers, on every storage.

| storage | lock | freed when the holder dies |
|---|---|---|
| SQLite, journal file | ``flock`` on ``<file>.budget-lock`` | by the OS |
| PostgreSQL | ``pg_try_advisory_lock`` on a connection of its own | by the server (session ends) |
| MySQL/MariaDB | ``GET_LOCK`` (result checked: 1 held, 0 waited too long → wait again, NULL → error) | by the server |
| Redis journal | a key set with NX and a 30 s lease, renewed every 10 s by a thread while held | when the lease runs out |
| gRPC proxy | the same lease, kept by ``tagsearch storage-proxy`` itself (see proxy.py) | when the lease runs out |

A lock that cannot be taken is waited for (a log line every ``WAIT_LOG_SECONDS``) or, when its
server is unreachable for longer than the outage limit, reported as an error: a worker never goes
on unlocked. A lease whose renewal fails is reported (``lost`` is set and logged).

A lock can be lost while held: a lease that ran out during an outage, a restarted proxy or Redis
(leases are in memory), a database connection cut (the server frees its advisory lock). So the
holder ``confirm``s it with its server before it lets a new trial go: true only if it held the lock
without a break since it took it. ``budget.Budget`` checks the budget again under a fresh lock
when that fails, and backs off if another worker took the slot meanwhile (fencing on the client).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from tagsearch.log import log, warning
from tagsearch.errors import UserError
from tagsearch.runtime.outages import Outages
from tagsearch.runtime.location import local_path, proxy_address, scheme
from tagsearch.runtime import _optuna
from tagsearch.runtime.storage import with_driver
from tagsearch.runtime.worker_storage import outages_of

WAIT_LOG_SECONDS = 30
LEASE_SECONDS = 30
RENEW_SECONDS = 10
POLL_SECONDS = (0.02, 0.5)  # first and longest pause between two tries of a busy lock
GET_LOCK_SECONDS = 5  # MySQL: one GET_LOCK call waits this long, then is retried


def lock_key(study_name: str) -> int:
    return int(hashlib.sha256(study_name.encode()).hexdigest()[:15], 16)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class BudgetLock:
    """The lock of ``study_name`` on the storage ``url`` (``BudgetLock()``: no other worker, no lock).
    ``outages``: the outage state of the worker's storage, so that a worker that waited out the
    limit on either fails fast on both (default: a fresh one)."""

    def __init__(self, url: str | None = None, study_name: str = "", outages: Outages | None = None):
        self.held, self.study_name, self.outages = False, study_name, outages or Outages()
        self._impl = None if url is None else _make(url, study_name, self.outages)

    @classmethod
    def of(cls, study, url: str | None) -> "BudgetLock":
        """The lock of ``study`` on its storage's URL ``url`` (None: no other worker), sharing that
        storage's outage state (``worker_storage.outages_of``)."""
        return cls(url, study.study_name, outages_of(_optuna.study_storage(study)))

    def acquire(self) -> None:
        if not self.held and self._impl is not None:
            self._impl.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._impl is not None:
                self._impl.release()

    def confirm(self) -> bool:
        """Whether this worker still holds the lock, unbroken since ``acquire`` (asked of its server)."""
        return self.held and (self._impl is None or self._impl.confirm())

    def close(self) -> None:
        self.release()
        if self._impl is not None:
            self._impl.close()

    def __enter__(self) -> "BudgetLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _make(url: str, study_name: str, outages: Outages):
    kind, path, key = scheme(url), local_path(url), lock_key(study_name)
    if path is not None:
        return FileLock(path.with_name(f"{path.name}.budget-lock"))
    if kind in ("postgresql", "mysql"):
        return AdvisoryLock(url, kind, key, outages)
    if kind in ("redis", "rediss"):
        return RedisLeaseLock(url, f"tagsearch:budget-lock:{key}", outages)
    if kind == "grpc":
        return GrpcLeaseLock(url, f"budget-lock:{key}", outages)
    return None  # SQLite in memory: one process, nothing to share


class Waiting:
    """Backoff between tries of a busy lock, with a log line every WAIT_LOG_SECONDS."""

    def __init__(self, what: str):
        self.what, self.start, self.pause, self.logged = what, time.monotonic(), POLL_SECONDS[0], 0

    def __call__(self) -> None:
        waited = time.monotonic() - self.start
        if waited - self.logged >= WAIT_LOG_SECONDS:
            self.logged = waited
            log(f"waiting for {self.what}: held by another worker for {waited:.0f} s so far")
        time.sleep(self.pause)
        self.pause = min(self.pause * 2, POLL_SECONDS[1])


class FileLock:
    """``flock`` on a file beside the study's, made at the first ``acquire`` (a worker refused
    before it ever counts leaves no file behind)."""

    def __init__(self, path: Path):
        self.path, self.handle = path, None

    def acquire(self) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)  # blocks; the OS frees it when the holder dies

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)

    def confirm(self) -> bool:
        return True  # the OS keeps a flock for as long as the process lives

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class AdvisoryLock:
    """A server-side named lock on a connection of its own (AUTOCOMMIT, no pool): the server frees
    it when that connection ends, i.e. when the worker dies. A connection lost while waiting is
    reopened (outage rules of ``outages``)."""

    def __init__(self, url: str, kind: str, key: int, outages: Outages | None = None):
        import sqlalchemy

        self.kind, self.key, self.connection, self.outages = kind, key, None, outages or Outages()
        self.engine = sqlalchemy.create_engine(with_driver(url), poolclass=sqlalchemy.pool.NullPool)
        self.what = f"the budget lock ({'pg_advisory_lock' if kind == 'postgresql' else 'GET_LOCK'} {key})"

    def _connection(self):
        if self.connection is None:
            self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.connection

    def _try(self) -> bool:
        try:
            if self.kind == "postgresql":
                return bool(self._connection().exec_driver_sql(f"SELECT pg_try_advisory_lock({self.key})").scalar())
            got = self._connection().exec_driver_sql(
                f"SELECT GET_LOCK('tagsearch-{self.key}', {GET_LOCK_SECONDS})").scalar()
        except Exception:
            self._drop_connection()
            raise
        if got is None:  # MySQL: an error (out of memory, killed thread): never proceed unlocked
            raise UserError(f"MySQL GET_LOCK('tagsearch-{self.key}') returned NULL (a server error); "
                            f"the budget lock cannot be taken")
        return got == 1  # 0: another worker held it for GET_LOCK_SECONDS; wait again

    def acquire(self) -> None:
        waiting = Waiting(self.what)
        while not self.outages.call(self.what, self._try):
            waiting()

    def confirm(self) -> bool:
        """Asked on the lock's own connection: a cut connection (the server freed the lock) is False."""
        ask = (f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
               f"AND pid = pg_backend_pid() AND objsubid = 1 "
               f"AND classid::bigint * 4294967296 + objid::bigint = {self.key})" if self.kind == "postgresql"
               else f"SELECT IS_USED_LOCK('tagsearch-{self.key}') = CONNECTION_ID()")
        if self.connection is None:
            return False
        try:
            return bool(self.connection.exec_driver_sql(ask).scalar())
        except Exception as exc:
            log(f"confirming {self.what}: {type(exc).__name__}; its connection is gone, and so is the lock")
            self._drop_connection()
            return False

    def release(self) -> None:
        give = (f"SELECT pg_advisory_unlock({self.key})" if self.kind == "postgresql"
                else f"SELECT RELEASE_LOCK('tagsearch-{self.key}')")
        try:
            self._connection().exec_driver_sql(give)
        except Exception as exc:  # the connection is gone: so is the lock (the server freed it)
            log(f"releasing {self.what}: {type(exc).__name__}; dropping its connection, which frees it")
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self.connection is not None:
            try:
                self.connection.invalidate()
                self.connection.close()
            except Exception:
                pass
            self.connection = None

    def close(self) -> None:
        self._drop_connection()
        self.engine.dispose()


class LeaseLock:
    """A lock with a lease (``LEASE_SECONDS``) renewed every ``RENEW_SECONDS`` by a daemon thread
    while held: a live holder keeps it however long it holds it, a dead one loses it when the
    lease runs out. Subclasses implement ``_try``, ``_renew`` and ``_drop`` for one holder id."""

    what = "the budget lock"

    def __init__(self, outages: Outages | None = None):
        self.holder, self.outages = holder_id(), outages or Outages()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        waiting = Waiting(self.what)
        while not self.outages.call(self.what, self._try):
            waiting()
        self.lost, self._stop = False, threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, args=(self._stop,), daemon=True,
                                        name="budget-lock-lease")
        self._thread.start()

    def _keep_alive(self, stop: threading.Event) -> None:
        pause = RENEW_SECONDS
        while not stop.wait(pause):
            try:
                renewed = self._renew()
            except Exception as exc:  # retried soon: a lease must be renewed well inside its length
                pause = min(RENEW_SECONDS, 1.0)
                warning(f"renewing {self.what}: {type(exc).__name__}: {str(exc)[:200]}; retrying in {pause:g} s")
                continue
            pause = RENEW_SECONDS
            if not renewed:
                self.lost = True
                warning(f"lost {self.what}: its lease ran out before it was renewed (the worker stalled for "
                        f"{LEASE_SECONDS} s or the server restarted)")
                return

    def confirm(self) -> bool:
        """The lease renewed now: False once it ran out or the server forgot it (restarted)."""
        if self.lost:
            return False
        if not self.outages.call(f"confirming {self.what}", self._renew):
            self.lost = True
            warning(f"lost {self.what}: its lease ran out or its server restarted while held")
        return not self.lost

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.outages.call(f"releasing {self.what}", self._drop)
        except UserError as exc:  # unreachable for long: the lease frees it
            log(f"{exc}; the lease frees it within {LEASE_SECONDS} s")

    def close(self) -> None:
        pass


class RedisLeaseLock(LeaseLock):
    RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    DROP = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, url: str, name: str, outages: Outages | None = None):
        import redis

        super().__init__(outages)
        self.client, self.name = redis.Redis.from_url(url, socket_timeout=10), name
        self.what = f"the budget lock (Redis key {name})"

    def _try(self) -> bool:
        return bool(self.client.set(self.name, self.holder, nx=True, px=int(LEASE_SECONDS * 1000)))

    def _renew(self) -> bool:
        return bool(self.client.eval(self.RENEW, 1, self.name, self.holder, int(LEASE_SECONDS * 1000)))

    def _drop(self) -> None:
        self.client.eval(self.DROP, 1, self.name, self.holder)

    def close(self) -> None:
        self.client.close()


SERVICE = "tagsearch.BudgetLock"  # the storage proxy's lease-lock service (proxy.py serves it)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcLeaseLock(LeaseLock):
    """The budget lock kept by the storage proxy (see ``Leases``)."""

    def __init__(self, url: str, name: str, outages: Outages | None = None):
        from tagsearch.runtime import proxy_auth

        super().__init__(outages)
        host, port = proxy_address(url)
        self.channel = proxy_auth.channel(host, port)  # bears the proxy's token, if one is set
        self.name, self.url = name, url
        self.what = f"the budget lock ({name} on {url})"
        self.calls = {method: self.channel.unary_unary(f"/{SERVICE}/{method}",
                                                       request_serializer=lambda r: json.dumps(r).encode(),
                                                       response_deserializer=json.loads)
                      for method in ("Acquire", "Renew", "Release")}

    def _call(self, method: str) -> bool:
        import grpc

        try:
            reply = self.calls[method]({"name": self.name, "holder": self.holder, "lease": LEASE_SECONDS},
                                       timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UserError(f"{self.url} is an Optuna gRPC proxy without tagsearch's lock service, so workers "
                                f"could overshoot the budget; expected a 'tagsearch storage-proxy'") from None
            raise
        return bool(reply.get("ok"))

    def _try(self) -> bool:
        return self._call("Acquire")

    def _renew(self) -> bool:
        return self._call("Renew")

    def _drop(self) -> None:
        self._call("Release")

    def close(self) -> None:
        self.channel.close()
