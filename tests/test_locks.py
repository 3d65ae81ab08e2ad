"""Budget locks never fall back silently: a busy lock is waited for, an unreachable server is an
error after the outage limit, a lease is kept alive while its holder lives and freed when it dies.
The same checks run on every kind of lock (file, PostgreSQL, MariaDB, Redis lease, gRPC proxy
lease); the server ones are marked ``services`` and skip when their server is absent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import optuna
import pytest

from tagsearch.errors import UserError
from tagsearch.runtime import _optuna, locks, proxy
from tagsearch.runtime.outages import StorageOutage
from test_services import server_url

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def short_leases(monkeypatch):
    """Leases of 1 s renewed every 0.25 s, MySQL's GET_LOCK retried every second."""
    monkeypatch.setattr(locks, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(locks, "RENEW_SECONDS", 0.25)
    monkeypatch.setattr(locks, "GET_LOCK_SECONDS", 1)


@pytest.fixture
def grpc_url():
    """A lock-and-storage proxy server in this process, on a free loopback port."""
    port = free_port()
    server = proxy.make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(grace=None)


def lock_url(kind: str, tmp_path, request) -> str:
    if kind == "file":
        return f"sqlite:///{tmp_path}/locks.db"
    if kind == "grpc":
        return request.getfixturevalue("grpc_url")
    return server_url(kind)


KINDS = ["file", "grpc", pytest.param("postgresql", marks=pytest.mark.services),
         pytest.param("mysql", marks=pytest.mark.services), pytest.param("redis", marks=pytest.mark.services)]


def counted(monkeypatch, impl, method: str) -> list:
    """Count the calls of ``impl.method`` (a lock's tries, a lease's renewals)."""
    calls, real = [], getattr(impl, method)

    def count(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(impl, method, count)
    return calls


def blocked_in_flock(path) -> bool:
    """Whether some process waits for a flock on ``path`` (a ``->`` line of /proc/locks)."""
    inode = os.stat(path).st_ino
    return any(line.split()[1] == "->" and line.split()[2] == "FLOCK" and line.split()[6].endswith(f":{inode}")
               for line in open("/proc/locks") if len(line.split()) > 6)


def wait_until(condition, what: str) -> None:
    while not condition():  # the test's timeout ends a wait that never comes true
        time.sleep(0.05)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_a_held_lock_is_waited_for_kept_alive_and_then_taken(kind, tmp_path, request, short_leases, monkeypatch):
    """B waits while A holds the lock (B is seen blocked, or trying again and again); a lease is held
    through more than two lease periods (renewals) and a MySQL GET_LOCK timeout is tried again; B
    takes the lock only after A released it."""
    url, name = lock_url(kind, tmp_path, request), f"lock-test-{uuid.uuid4().hex[:8]}"
    a, b = locks.BudgetLock(url, name), locks.BudgetLock(url, name)
    events = []
    try:
        a.acquire()
        renewals = counted(monkeypatch, a._impl, "_renew") if hasattr(a._impl, "_renew") else None
        tries = counted(monkeypatch, b._impl, "_try") if hasattr(b._impl, "_try") else None
        thread = threading.Thread(target=lambda: (b.acquire(), events.append("B took it")), daemon=True)
        thread.start()
        if kind == "file":
            wait_until(lambda: blocked_in_flock(str(b._impl.path)), "B blocked in flock")
        else:
            wait_until(lambda: len(tries) >= 3, "B tried three times")
        if renewals is not None:  # renewed every 0.25 s: 9 renewals outlast two 1 s leases
            wait_until(lambda: len(renewals) >= 9, "A renewed its lease nine times")
        events.append("A releases it")
        a.release()
        thread.join(30)
        assert events == ["A releases it", "B took it"], events
        assert not getattr(a._impl, "lost", False)
    finally:
        b.close()
        a.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["grpc", pytest.param("redis", marks=pytest.mark.services)])
def test_a_lease_of_a_dead_holder_is_freed(kind, tmp_path, request, short_leases, monkeypatch):
    """A holder that stops renewing (its process died) keeps the lock until its lease runs out, then
    loses it."""
    monkeypatch.setattr(locks, "LEASE_SECONDS", 3.0)
    url, name = lock_url(kind, tmp_path, request), f"lock-test-{uuid.uuid4().hex[:8]}"
    a, b = locks.BudgetLock(url, name), locks.BudgetLock(url, name)
    try:
        a.acquire()
        a._impl._stop.set()  # its renewal thread dies with it
        assert not b._impl._try(), "the lease was free before it ran out"
        b.acquire()  # returns once the lease ran out (the test's timeout otherwise)
        assert b.held
    finally:
        b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["postgresql+psycopg2://postgres@127.0.0.1:{port}/test",
                                 "mysql+pymysql://root@127.0.0.1:{port}/test", "redis://127.0.0.1:{port}/0",
                                 "grpc://127.0.0.1:{port}"])
def test_an_unreachable_lock_server_is_an_error_after_the_outage_limit(url, monkeypatch, capsys):
    monkeypatch.setenv("TAGSEARCH_OUTAGE_LIMIT", "1")
    lock = locks.BudgetLock(url.format(port=free_port()), "nobody-listens")
    with pytest.raises(StorageOutage, match="unreachable for [1-9][0-9]* s .*TAGSEARCH_OUTAGE_LIMIT=1"):
        lock.acquire()
    assert not lock.held
    assert "storage unreachable during the budget lock" in capsys.readouterr().err


def test_mysql_get_lock_null_is_an_error_not_a_pass(monkeypatch):
    lock = locks.AdvisoryLock("mysql+pymysql://root@127.0.0.1:1/test", "mysql", 42)

    class Null:
        def exec_driver_sql(self, sql):
            assert "GET_LOCK" in sql
            return self

        def scalar(self):
            return None

    monkeypatch.setattr(lock, "_connection", lambda: Null())
    with pytest.raises(UserError, match="GET_LOCK.*returned NULL"):
        lock.acquire()


@pytest.mark.timeout(30)
def test_a_plain_optuna_proxy_without_the_lock_service_is_refused():
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    server = _optuna.grpc_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port, ThreadPoolExecutor(4))
    server.start()
    try:
        with pytest.raises(UserError, match="without tagsearch's lock service"):
            locks.BudgetLock(f"grpc://127.0.0.1:{port}", "x").acquire()
    finally:
        server.stop(grace=None)


# ---------------------------------------------------------------------------------------------
# A lock lost while held never gives the last slot twice


def lose_the_lock(kind: str, url: str, name: str, restart) -> None:
    """What takes a held lock from its holder: a restarted proxy (its leases are in memory), a Redis
    lease that ran out, a database connection cut (the server frees its advisory lock)."""
    key = locks.lock_key(name)
    if kind == "grpc":
        restart()
    elif kind == "redis":
        import redis

        redis.Redis.from_url(url).delete(f"tagsearch:budget-lock:{key}")
    else:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            connection.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
                f"AND classid::bigint * 4294967296 + objid::bigint = {key}")
        engine.dispose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["grpc", pytest.param("redis", marks=pytest.mark.services),
                                  pytest.param("postgresql", marks=pytest.mark.services)])
def test_a_lock_lost_while_a_trial_is_created_never_gives_the_last_slot_twice(kind, tmp_path, monkeypatch):
    """Worker A holds the budget lock and has counted one free slot; while it creates its trial its
    lock is lost, and worker B takes the lock, counts the same free slot and runs a trial there. A
    must not run its trial: the study ends with exactly its budget of one finished trial."""
    from tagsearch.runtime.storage import open_storage
    from tagsearch.runtime.trials import run_trials

    monkeypatch.setenv("TAGSEARCH_OUTAGE_LIMIT", "20")
    port, servers = free_port(), []

    def serve() -> None:
        servers.append(proxy.make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port))
        servers[-1].start()

    def restart() -> None:
        servers[-1].stop(grace=None).wait()
        serve()

    if kind == "grpc":
        serve()
        url = f"grpc://127.0.0.1:{port}"
    else:
        url = server_url(kind)
    name, study_url = f"lock-slot-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path}/slot.db"
    study_a = optuna.create_study(storage=open_storage(study_url), study_name=name)
    study_b = optuna.load_study(study_name=name, storage=open_storage(study_url))
    storage_a, ran = _optuna.study_storage(study_a), []
    real_create = storage_a.create_new_trial

    def objective(trial) -> float:
        ran.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    def create_while_the_lock_is_lost(*args, **kwargs):
        if not ran:
            lose_the_lock(kind, url, name, restart)
            worker_b = threading.Thread(target=run_trials, args=(study_b, objective, 1),
                                        kwargs={"lock": locks.BudgetLock.of(study_b, url)})
            worker_b.start()
            worker_b.join(60)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(storage_a, "create_new_trial", create_while_the_lock_is_lost)
    try:
        assert run_trials(study_a, objective, 1, lock=locks.BudgetLock.of(study_a, url)) == 0
    finally:
        for server in servers:
            server.stop(grace=None)
    states = [t.state for t in study_a.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1 and len(ran) == 1, (states, ran)
    backed_off = [t for t in study_a.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["fail_reason"].split(":")[0] for t in backed_off] == ["not run"]
