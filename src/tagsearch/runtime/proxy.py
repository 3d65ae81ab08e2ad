"""``tagsearch storage-proxy``: one process holds the database connections, workers talk gRPC.

It serves Optuna's storage proxy (``optuna.storages`` gRPC service, read by ``GrpcStorageProxy`` on
``grpc://HOST:PORT``) and, on the same port, the small lease-lock service that gives workers behind
the proxy their budget lock (``tagsearch.BudgetLock``: Acquire / Renew / Release, JSON messages).
Workers connected to a plain Optuna proxy server have no such service and stop with an error
rather than run unlocked.

Whoever reaches the proxy owns the study (it can delete studies, forge trials, hold the lock), so
it admits only its cluster: with a shared token (``proxy_auth``: ``--token-file``, or
``TAGSEARCH_PROXY_TOKEN``) every call must bear it. Loopback by default; any other address without
a token is refused unless ``--insecure`` says so (and then warned about loudly). Lease lengths
asked for are capped at ``MAX_LEASE_SECONDS``: a client cannot freeze the lock for ever.
"""

from __future__ import annotations

import ipaddress
import json
import math
import signal
import threading
import time

from tagsearch.log import log, warning
from tagsearch.errors import UserError
from tagsearch.runtime import proxy_auth
from tagsearch.runtime.locks import SERVICE, address
from tagsearch.runtime.location import JOURNAL_SCHEMES, PROXY_SCHEMES, masked, scheme
from tagsearch.runtime.storage import open_storage

PROXY_THREADS = 32
MAX_LEASE_SECONDS = 600.0  # longer than any lease tagsearch asks for; an endless one would freeze every worker


def serve(storage: str, host: str = "127.0.0.1", port: int = 13000, token_file: str | None = None,
          insecure: bool = False) -> int:
    """``tagsearch storage-proxy``: serve the database ``storage`` (a URL) on ``host:port`` until
    SIGINT/SIGTERM; 0 after a clean stop. ``token_file`` (else ``TAGSEARCH_PROXY_TOKEN``): the token
    every call must bear; a non-loopback ``host`` without one is refused unless ``insecure``."""
    kind = scheme(storage)
    if kind in JOURNAL_SCHEMES + PROXY_SCHEMES:
        raise UserError(f"storage-proxy serves a relational database (postgresql://, mysql://, sqlite://); "
                        f"{masked(storage)!r} is a {kind} storage, which Optuna's gRPC proxy does not "
                        f"support (optuna/optuna#6084); point workers at it directly instead")
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is out of range; expected 1..65535")
    token = proxy_auth.token_from_environment(token_file)
    if token is None and not is_loopback(host):
        if not insecure:
            raise UserError(f"--host {host} is reachable from other machines, and without a token anyone there could "
                            f"delete or forge studies; expected a token (--token-file PATH of a 0600 file, or "
                            f"{proxy_auth.TOKEN_ENV}) that the workers share, or --insecure on a network you trust")
        warning(f"WARNING: --insecure: serving on {host} WITHOUT A TOKEN. Anyone who reaches this port can delete "
                f"studies, forge trials that retrain trusts, and hold the budget lock. Use a token "
                f"(--token-file or {proxy_auth.TOKEN_ENV}).")
    database = open_storage(storage)
    server = make_server(database, host, port, token)
    log(f"storage proxy for {masked(storage)} at grpc://{address(host, port)} "
        f"(workers: --storage grpc://{address(host, port)}{', with the token' if token else ''}); Ctrl-C stops it")
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


def make_server(storage, host: str, port: int, token: str | None = None):
    """Optuna's proxy service for ``storage`` (cached like ``optuna.storages.get_storage``) plus the
    lock service, bound to ``host:port`` (a UserError when the port is taken); with ``token``,
    every call on either service must bear it."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import optuna
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    storage = optuna.storages.get_storage(storage)  # RDBStorage → _CachedStorage, as Optuna advises
    # Optuna's make_server, with the token check in front of every service
    server = grpc.server(ThreadPoolExecutor(max_workers=PROXY_THREADS),
                         interceptors=[proxy_auth.server_interceptor(token)] if token else None)
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    try:
        server.add_insecure_port(address(host, port))
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
        now, lease = time.monotonic(), lease_seconds(request)
        with self.mutex:
            holder, expiry = self.table.get(request["name"], (None, 0.0))
            if lease is None or holder not in (None, request["holder"]) and expiry > now:
                return {"ok": False}
            self.table[request["name"]] = (request["holder"], now + lease)
            return {"ok": True}

    def renew(self, request: dict, context) -> dict:
        now, lease = time.monotonic(), lease_seconds(request)
        with self.mutex:
            holder, expiry = self.table.get(request["name"], (None, 0.0))
            if lease is None or holder != request["holder"] or expiry <= now:
                return {"ok": False}
            self.table[request["name"]] = (holder, now + lease)
            return {"ok": True}

    def release(self, request: dict, context) -> dict:
        with self.mutex:
            if self.table.get(request["name"], (None,))[0] == request["holder"]:
                del self.table[request["name"]]
        return {"ok": True}


def lease_seconds(request: dict) -> float | None:
    """The lease a request asks for, capped at ``MAX_LEASE_SECONDS``; None for no number > 0."""
    try:
        lease = float(request["lease"])
    except (KeyError, TypeError, ValueError):
        return None
    if math.isnan(lease) or lease <= 0:
        return None
    return min(lease, MAX_LEASE_SECONDS)
