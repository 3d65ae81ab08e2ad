"""Scale-out on real servers: a two-worker study on a Redis journal, checked with the stress test's
invariants (exact budget, no FAIL, no duplicated numbers, learning curves and user attributes on every
finished trial), and eight workers through the gRPC storage proxy with PostgreSQL behind it. The same
two-worker study on PostgreSQL and MariaDB/MySQL runs in test_outages.py, through a relay that cuts the
connection mid-study. The workers are the real runtime around a stub objective (``tagsearch.testing.stub_worker``).

Each test skips, saying why, when its server does not answer on 127.0.0.1 (CI starts all three).
Override the URLs with TAGSEARCH_TEST_POSTGRES / TAGSEARCH_TEST_MYSQL / TAGSEARCH_TEST_REDIS. Every
test uses a study name of its own and deletes it afterwards; the Redis test works in an empty
Redis database (journal keys are not per study) and removes the journal keys it wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import optuna
import pytest

from conftest import REPO
from tagsearch.runtime import _optuna
from tagsearch.runtime.storage import open_storage
from test_stress import check_study, run_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.services, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

SERVERS = {
    "postgresql": ("TAGSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"),
    "mysql": ("TAGSEARCH_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "redis": ("TAGSEARCH_TEST_REDIS", "redis://127.0.0.1:6379"),
}
TARGET, WORKERS = 8, 2
JOURNAL_KEYS = (":log_number", ":snapshot")  # JournalRedisBackend's keys with the default (empty) prefix


def server_url(kind: str) -> str:
    """The server's URL, or skip when nothing listens on its port."""
    variable, default = SERVERS[kind]
    url = os.environ.get(variable) or default
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or {"postgresql": 5432, "mysql": 3306, "redis": 6379}[kind]
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        pytest.skip(f"no {kind} server on {host}:{port} ({exc}); set {variable} or start one to run this test")
    return url


def empty_redis_db(url: str) -> str:
    """``url`` pointed at an empty database of that Redis server (so cleanup cannot touch others' keys)."""
    import redis

    base = url.rstrip("/")
    if urlsplit(base).path.strip("/"):
        return base  # the caller chose a database
    for index in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{index}", socket_timeout=5)
        try:
            if client.dbsize() == 0:
                return f"{base}/{index}"
        finally:
            client.close()
    pytest.skip(f"no empty database on the Redis server {base}")


def drop_redis_journal(url: str, name: str) -> None:
    """Delete study ``name``, then remove the journal keys, but only when no other study lives there."""
    import redis

    storage = open_storage(url)
    if name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    if optuna.get_all_study_names(storage):
        return
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(JOURNAL_KEYS) + [k.decode() for k in client.scan_iter(match=":log:*")]
        client.delete(*keys)
    finally:
        client.close()


@pytest.mark.timeout(240)
def test_redis_journal(tmp_path):
    url = empty_redis_db(server_url("redis"))
    name = f"tagsearch-reliability-{uuid.uuid4().hex[:10]}"
    try:
        run_workers(tmp_path, url, name, WORKERS, TARGET, 200)
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        check_study(study, TARGET)
        assert type(_optuna.study_storage(study).inner).__name__ == "JournalStorage"
    finally:
        drop_redis_journal(url, name)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_eight_workers_through_the_proxy_with_a_dashboard_polling(tmp_path, tiny_csv):
    """The load benchmark (``python -m benchmarks run reliability_load``) at test size: 8 workers ×
    1 thread, 24 trials through the gRPC storage proxy with PostgreSQL behind it, the dashboard read
    every second: the budget is met exactly, no FAIL, no duplicated number, nothing left RUNNING or
    WAITING."""
    postgres = server_url("postgresql")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "run", "reliability_load", "--modes", "proxy",
                           "--postgres", postgres, "--trials", "24", "--workers", "8", "--folder", str(tmp_path),
                           "--data", str(tiny_csv), "--stub"], cwd=REPO, capture_output=True, text=True, timeout=230)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # one JSON line per mode
    assert result["exit_codes"] == [0] * 8, result
    assert (result["finished"], result["fail"], result["duplicated_numbers"], result["running_or_waiting"]) == \
        (24, 0, 0, 0), result
    assert result["defaults_trials"] == 1 and result["numbers_contiguous"], result
    assert result["dashboard_polls"] > 0 and result["dashboard_errors"] == [], result
    assert result["proxy_exit"] == 0, (tmp_path / "proxy" / "proxy.log").read_text()  # SIGTERM: a clean stop
    assert "storage proxy stopped" in (tmp_path / "proxy" / "proxy.log").read_text()
