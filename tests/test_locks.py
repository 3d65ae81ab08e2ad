"""Budget locks never fall back silently: a busy lock is waited for, an unreachable server is an
error after the outage limit, a lease is kept alive while its holder lives and freed when it dies.
The same checks run on every kind of lock (file, PostgreSQL, MariaDB, Redis lease, gRPC proxy
lease); the server ones are marked ``services`` and skip when their server is absent.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import optuna
import pytest

from tagsearch.runtime import locks
from tagsearch.runtime import proxy
from tagsearch.errors import UserError
from tagsearch.runtime.storage import StorageOutage
from test_services import server_url

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def fresh_outage_state(monkeypatch):
    """A worker process that waited out the outage limit fails fast from then on; tests start afresh."""
    from tagsearch.runtime import storage

    monkeypatch.setattr(storage, "gave_up", None)


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_a_held_lock_is_waited_for_kept_alive_and_then_taken(kind, tmp_path, request, short_leases):
    """B waits while A holds the lock — for more than two lease periods (and GET_LOCK timeouts), so
    only renewal keeps A's lease — and takes it as soon as A releases it."""
    url, name = lock_url(kind, tmp_path, request), f"lock-test-{uuid.uuid4().hex[:8]}"
    a, b = locks.BudgetLock(url, name), locks.BudgetLock(url, name)
    taken = threading.Event()
    try:
        a.acquire()
        thread = threading.Thread(target=lambda: (b.acquire(), taken.set()), daemon=True)
        thread.start()
        assert not taken.wait(2.3), "B took a lock A holds (A's lease lapsed or GET_LOCK was ignored)"
        a.release()
        assert taken.wait(10), "B did not get the lock once A released it"
        assert not getattr(a._impl, "lost", False)
    finally:
        b.close()
        a.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["grpc", pytest.param("redis", marks=pytest.mark.services)])
def test_a_lease_of_a_dead_holder_is_freed(kind, tmp_path, request, short_leases):
    """A holder that stops renewing (its process died) loses the lease after LEASE_SECONDS."""
    url, name = lock_url(kind, tmp_path, request), f"lock-test-{uuid.uuid4().hex[:8]}"
    a, b = locks.BudgetLock(url, name), locks.BudgetLock(url, name)
    try:
        a.acquire()
        a._impl._stop.set()  # its renewal thread dies with it
        start = time.monotonic()
        b.acquire()
        assert 0.3 < time.monotonic() - start < 5
    finally:
        b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["postgresql+psycopg2://postgres@127.0.0.1:{port}/test",
                                 "mysql+pymysql://root@127.0.0.1:{port}/test", "redis://127.0.0.1:{port}/0",
                                 "grpc://127.0.0.1:{port}"])
def test_an_unreachable_lock_server_is_an_error_after_the_outage_limit(url, monkeypatch, capsys):
    monkeypatch.setenv("TAGSEARCH_OUTAGE_LIMIT", "1")
    lock = locks.BudgetLock(url.format(port=free_port()), "nobody-listens")
    start = time.monotonic()
    with pytest.raises(StorageOutage, match="unreachable for [0-9]+ s .*TAGSEARCH_OUTAGE_LIMIT=1"):
        lock.acquire()
    assert 1 <= time.monotonic() - start < 12
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
    from optuna.storages._grpc.server import make_server

    port = free_port()
    server = make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)
    server.start()
    try:
        with pytest.raises(UserError, match="without tagsearch's lock service"):
            locks.BudgetLock(f"grpc://127.0.0.1:{port}", "x").acquire()
    finally:
        server.stop(grace=None)
