"""Database outages: a call to a database server or proxy that fails with a lost or refused
connection is retried with exponential backoff (0.5 s → 8 s, one log line per try) until the
failures have lasted ``TAGSEARCH_OUTAGE_LIMIT`` seconds (default 120); then a ``StorageOutage``.

An ``Outages`` object holds that policy and the one fact that outlives a call: that this storage
already waited out the limit (``gave_up``), after which every later call fails fast. A worker's
storage wrapper, its budget lock and its trial loop share one (``storage.open_storage`` makes it,
``trials.run_trials`` reads it from the study's storage).
"""

from __future__ import annotations

import time

from tagsearch.errors import UserError
from tagsearch.log import log, warning
from tagsearch.runtime.heartbeat import OUTAGE_LIMIT_SECONDS, env_seconds
from tagsearch.runtime.interrupts import storage_call

BACKOFF_SECONDS = (0.5, 8.0)


OUTAGE_MARK = "the storage was unreachable for"  # how a StorageOutage's message begins (ray_launch reads it)


class StorageOutage(UserError):
    """The storage stayed unreachable for longer than TAGSEARCH_OUTAGE_LIMIT seconds."""


def outage_limit() -> int:
    return env_seconds("TAGSEARCH_OUTAGE_LIMIT", OUTAGE_LIMIT_SECONDS)


class Outages:
    """Retries through transient storage errors; ``gave_up`` once an outage outlasted ``limit``."""

    def __init__(self, limit: float | None = None):
        self.limit = outage_limit() if limit is None else limit
        self.gave_up: StorageOutage | None = None

    def call(self, what: str, function, *args, **kwargs):
        """``function(*args, **kwargs)``, retried while it fails with a transient error; each attempt
        runs inside ``storage_call()`` (a signal waits for it), the pauses between them do not."""
        start, pause = None, BACKOFF_SECONDS[0]
        while True:
            try:
                with storage_call():
                    result = function(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                start = now if start is None else start
                reason = describe(exc)
                if self.gave_up is not None:
                    raise self.gave_up from None  # this storage already waited out the limit: fail fast now
                if now - start >= self.limit:
                    self.gave_up = StorageOutage(
                        f"{OUTAGE_MARK} {now - start:.0f} s (limit TAGSEARCH_OUTAGE_LIMIT="
                        f"{self.limit:g} s) during {what}: {reason}; the study is consistent: rerun the worker "
                        f"once the database is back")
                    raise self.gave_up from None
                warning(f"storage unreachable during {what} ({reason}); retry in {pause:.1f} s "
                    f"(down {now - start:.0f} s, giving up after {self.limit:g} s)")
                time.sleep(pause)
                pause = min(pause * 2, BACKOFF_SECONDS[1])
                continue
            if start is not None:
                log(f"storage reachable again after {time.monotonic() - start:.1f} s ({what})")
            return result


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (database restarted, network cut, proxy down): worth retrying.
    Not: a bad query, a constraint, a missing study, a user mistake. Optuna's RDBStorage wraps every
    SQLAlchemy error, a dropped connection included, in a StorageInternalError ("invalid data in the
    commit"), so the cause chain is searched."""
    seen = 0
    while exc is not None and seen < 5:
        if _transient(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _transient(exc: BaseException) -> bool:
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True  # connection refused/closed/reset, server gone away; SQLite: database is locked
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__
    if module.startswith("redis"):
        import redis.exceptions

        return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                redis.exceptions.BusyLoadingError))
    if module.startswith("grpc") and hasattr(exc, "code"):
        import grpc

        code = exc.code()
        details = exc.details() or "" if hasattr(exc, "details") else ""
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
            code == grpc.StatusCode.UNKNOWN and any(word in details for word in (
                "OperationalError", "InterfaceError", "ConnectionError", "connection")))
    return False


def describe(exc: BaseException) -> str:
    """The root cause of a (wrapped) storage error, in one line."""
    while exc.__cause__ is not None and type(exc).__name__ == "StorageInternalError":
        exc = exc.__cause__
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
