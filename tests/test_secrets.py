"""No secret is printed or written: a storage URL's password is masked wherever tagsearch shows or
writes the URL, and workers receive it through their environment, never their command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tagsearch.errors import UserError
from tagsearch.runtime.location import STORAGE_ENV, has_secret, masked, secret_env
from tagsearch.runtime.storage import open_storage
from test_services import server_url

SECRET = "S3CRET"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:S3CRET@db.example/test", "postgresql://user:***@db.example/test"),
    ("mysql+pymysql://root:S3CRET@127.0.0.1:3306/test", "mysql+pymysql://root:***@127.0.0.1:3306/test"),
    ("redis://:S3CRET@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://default:S3CRET@cache:6380", "rediss://default:***@cache:6380"),
    ("sqlite:///storage/tagsearch.db", "sqlite:///storage/tagsearch.db"),
    ("grpc://10.0.0.1:13000", "grpc://10.0.0.1:13000"),
])
def test_passwords_are_masked_in_every_kind_of_url(url, shown):
    assert masked(url) == shown and SECRET not in masked(url)
    assert has_secret(url) == (SECRET in url) and secret_env(url) == ({STORAGE_ENV: url} if SECRET in url else {})


def test_a_masked_url_read_back_says_how_to_give_the_password():
    with pytest.raises(UserError, match=f"password hidden.*{STORAGE_ENV}"):
        open_storage("postgresql://user:***@127.0.0.1:1/test")


@pytest.fixture
def password_role():
    """A PostgreSQL role that logs in with a password, and a database of its own (dropped after)."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(server_url("postgresql"), isolation_level="AUTOCOMMIT")
    name = f"ts_secret_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
        connection.exec_driver_sql(f"CREATE DATABASE {name} OWNER {name}")
    host = admin.url.host or "127.0.0.1"
    try:
        yield f"postgresql://{name}:{SECRET}@{host}:{admin.url.port or 5432}/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        admin.dispose()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_lines(pids) -> dict[int, bytes]:
    lines = {}
    for pid in pids:
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if line:  # a zombie's is empty
            lines[pid] = line
    return lines


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads other processes' argv from /proc")
def test_tune_on_a_password_url_leaves_the_password_nowhere(password_role, tiny_csv, tmp_path):
    """``tagsearch tune --storage postgresql://role:S3CRET@...``: the password is in none of its
    output, logs, storage/, results/, nor in any of its workers' command lines while they run."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop(STORAGE_ENV, None)
    command = [sys.executable, "-m", "tagsearch.cli", "tune", str(tiny_csv), "--spec", str(repo / "studies" / "tagger.toml"),
               "--models", "tfidf", "--time", "10m", "--n-trials", "1", "--max-epochs", "1", "--workers", "1",
               "--devices", "cpu", "--storage", password_role, "--study-name", "secret-test"]
    seen: dict[int, bytes] = {}
    with open(tmp_path / "output.txt", "wb") as output:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 840
            while process.poll() is None and time.monotonic() < deadline:
                seen.update(command_lines(descendants(process.pid)))
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                process.kill()
    text = (tmp_path / "output.txt").read_text(errors="replace")
    logs = "".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("storage/logs/*.log"))
    assert process.returncode == 0, text[-3000:] + logs
    workers = {pid: line for pid, line in seen.items() if b"worker" in line}
    assert workers, "no worker command line was seen while tune ran"
    assert not [line for line in seen.values() if SECRET.encode() in line], "the password is in a child's argv"
    leaked = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [], f"the password was written into {leaked}"
    assert (tmp_path / "storage" / "secret-test.toml").is_file() and (tmp_path / "results" / "secret-test").is_dir()
    assert any((tmp_path / "storage" / "logs").glob("secret-test-worker*.log"))
    assert "***" in (tmp_path / "storage" / "secret-test.toml").read_text()
