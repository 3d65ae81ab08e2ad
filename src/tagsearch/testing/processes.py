"""Processes the tests and the load benchmarks start around a study: a free loopback port, and
``tagsearch storage-proxy`` on one (started once it accepts connections, stopped with SIGTERM)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_proxy(backend: str, log: Path, seconds: float = 60) -> tuple[subprocess.Popen, str]:
    """``tagsearch storage-proxy`` for ``backend`` on a free loopback port, once it accepts connections;
    returns the process and its ``grpc://`` URL (stop it with ``stop_proxy``)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen([sys.executable, "-m", "tagsearch.cli", "storage-proxy", "--storage", backend,
                                    "--port", str(port)], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, Path(log).read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"grpc://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the storage proxy did not listen within {seconds}s: {Path(log).read_text()}")


def stop_proxy(process: subprocess.Popen) -> int:
    """SIGTERM: the proxy stops cleanly (exit 0)."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
