"""A time budget for the study as a whole (``[study] time_budget``, ``--time``), kept on the study.

The first worker that brings a budget to a study without a deadline (usually the one that creates
it; ``launch`` does it before starting its workers) records ``deadline`` = now + budget, in
wall-clock epoch seconds, as the study user attribute ``deadline``. It does so under the study's
``BudgetLock``, so of several workers starting at once exactly one sets it. Every worker reads it —
one that joins late, on another host, or without a budget of its own — and starts no trial at or
past it (``trials.run_trials``); a trial already running stops at its next epoch boundary once past
it and keeps its best epoch, as early stopping does (``study.objective.Objective``). A later budget
never moves a recorded deadline. Two explicit acts do: ``renew`` (``tagsearch tune`` resuming a
study whose deadline has passed: a new session of search) and ``stop_now`` (its first Ctrl-C: stop
searching, everywhere). Workers read the deadline again before each trial and after each epoch, so
either reaches every worker within one epoch. Hosts are assumed to keep their clocks in sync (NTP).

``clock`` is the one place that reads the time, so tests replace it.
"""

from __future__ import annotations

import contextlib
import datetime
import time

import optuna

from tagsearch.log import log
from tagsearch.runtime.locks import BudgetLock

ATTR = "deadline"


def clock() -> float:
    """Wall-clock time, epoch seconds (comparable across hosts, unlike ``time.monotonic``)."""
    return time.time()


def recorded(study: optuna.Study) -> float | None:
    """The study's deadline (epoch seconds), or None when it has no time budget."""
    value = study.user_attrs.get(ATTR)
    return None if value is None else float(value)


def establish(study: optuna.Study, budget: float | None, lock: BudgetLock) -> float | None:
    """The study's deadline: the recorded one, else — with a ``budget`` (seconds) — now + budget,
    recorded under ``lock`` (the study's budget lock, released again; a lock already held stays held)."""
    deadline = recorded(study)
    if budget is None or deadline is not None:
        if budget is not None:
            log(f"study {study.study_name!r}: its deadline stands ({when(deadline)}); a time budget never "
                f"moves a recorded one")
        return deadline
    with holding(lock):
        deadline = recorded(study)  # another worker may have recorded it while we waited
        if deadline is None:
            deadline = clock() + budget
            study.set_user_attr(ATTR, deadline)
            log(f"study {study.study_name!r}: time budget {budget:g} s, no trial starts after {when(deadline)}")
    return deadline


@contextlib.contextmanager
def holding(lock: BudgetLock):
    """The study's budget lock for the block; one already held by the caller stays held after it."""
    held = lock.held
    lock.acquire()
    try:
        yield
    finally:
        if not held:
            lock.release()


def renew(study: optuna.Study, budget: float, lock: BudgetLock) -> float:
    """A new session of ``budget`` seconds on ``study``: its deadline becomes now + budget, unless
    the recorded one is later (another session still running keeps its time). Under ``lock``."""
    with holding(lock):
        deadline = max(recorded(study) or 0.0, clock() + budget)
        study.set_user_attr(ATTR, deadline)
    log(f"study {study.study_name!r}: time budget {budget:g} s, no trial starts after {when(deadline)}")
    return deadline


def stop_now(study: optuna.Study) -> None:
    """Bring the study's deadline to now: no worker starts another trial, running ones stop at their
    next epoch boundary and keep their best epoch (a deadline only moves earlier here)."""
    now = clock()
    deadline = recorded(study)
    if deadline is None or deadline > now:
        study.set_user_attr(ATTR, now)


def passed(deadline: float | None) -> bool:
    """Whether ``deadline`` (None: none) has come."""
    return deadline is not None and clock() >= deadline


def when(deadline: float) -> str:
    """A deadline for a log line: UTC time of day and how far away it is."""
    moment = datetime.datetime.fromtimestamp(deadline, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    left = deadline - clock()
    return f"{moment}, {f'in {left:.0f} s' if left >= 0 else f'{-left:.0f} s ago'}"
