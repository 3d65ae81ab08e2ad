"""``tagsearch storage-proxy``: one process holds the database connections, workers talk gRPC.

It serves Optuna's storage proxy (``optuna.storages`` gRPC service, read by ``GrpcStorageProxy`` on
``grpc://HOST:PORT``) and, on the same port, the small lease-lock service that gives workers behind
the proxy their budget lock (``tagsearch.BudgetLock``: Acquire / Renew / Release, JSON messages).
Workers connected to a plain Optuna proxy server have no such service and stop with an error
rather than run unlocked.

Loopback by default: the proxy has no authentication and can delete studies, so any other address
gets a warning.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time

from tagsearch.log import log
from tagsearch.errors import UserError
from tagsearch.runtime._optuna import grpc_server
from tagsearch.runtime.locks import SERVICE, address
from tagsearch.runtime.storage import JOURNAL_SCHEMES, PROXY_SCHEMES, masked, open_storage, scheme

PROXY_THREADS = 32


def serve(storage: str, host: str = "127.0.0.1", port: int = 13000) -> int:
    """``tagsearch storage-proxy``: serve the database ``storage`` (a URL) on ``host:port`` until
    SIGINT/SIGTERM; 0 after a clean stop."""
    kind = scheme(storage)
    if kind in JOURNAL_SCHEMES + PROXY_SCHEMES:
        raise UserError(f"storage-proxy serves a relational database (postgresql://, mysql://, sqlite://); "
                        f"{masked(storage)!r} is a {kind} storage, which Optuna's gRPC proxy does not "
                        f"support (optuna/optuna#6084); point workers at it directly instead")
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is out of range; expected 1..65535")
    database = open_storage(storage)
    if not is_loopback(host):
        print(f"warning: serving on {host}, reachable from other machines; the storage proxy has no "
              f"login or encryption and can delete studies (use --host 127.0.0.1, or a private network)",
              file=sys.stderr)
    server = make_server(database, host, port)
    log(f"storage proxy for {masked(storage)} at grpc://{address(host, port)} "
        f"(workers: --storage grpc://{address(host, port)}); Ctrl-C stops it")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop(grace=5).wait()
    log("storage proxy stopped")
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(storage, host: str, port: int):
    """Optuna's proxy service for ``storage`` (cached like ``optuna.storages.get_storage``) plus the
    lock service, bound to ``host:port`` (a UserError when the port is taken)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import optuna

    storage = optuna.storages.get_storage(storage)  # RDBStorage → _CachedStorage, as Optuna advises
    try:
        server = grpc_server(storage, host, port, ThreadPoolExecutor(max_workers=PROXY_THREADS))
    except RuntimeError as exc:  # grpc: "Failed to bind to address"
        raise UserError(f"cannot serve on {address(host, port)}: {exc}; expected a free port") from None
    leases = Leases()
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(leases, name.lower()),
                                                         request_deserializer=json.loads,
                                                         response_serializer=lambda r: json.dumps(r).encode())
                for name in ("Acquire", "Renew", "Release")}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return server


class Leases:
    """In-memory leases: name → (holder, expiry). Lost when the proxy restarts: holders then fail
    to renew and say so; the critical sections they guard last milliseconds."""

    def __init__(self):
        self.table: dict[str, tuple[str, float]] = {}
        self.mutex = threading.Lock()

    def acquire(self, request: dict, context) -> dict:
        now = time.monotonic()
        with self.mutex:
            holder, expiry = self.table.get(request["name"], (None, 0.0))
            if holder not in (None, request["holder"]) and expiry > now:
                return {"ok": False}
            self.table[request["name"]] = (request["holder"], now + float(request["lease"]))
            return {"ok": True}

    def renew(self, request: dict, context) -> dict:
        now = time.monotonic()
        with self.mutex:
            holder, expiry = self.table.get(request["name"], (None, 0.0))
            if holder != request["holder"] or expiry <= now:
                return {"ok": False}
            self.table[request["name"]] = (holder, now + float(request["lease"]))
            return {"ok": True}

    def release(self, request: dict, context) -> dict:
        with self.mutex:
            if self.table.get(request["name"], (None,))[0] == request["holder"]:
                del self.table[request["name"]]
        return {"ok": True}
