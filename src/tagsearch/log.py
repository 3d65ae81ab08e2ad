"""Messages for people, through the standard ``logging`` module: every line goes to the logger of
the module that says it (``tagsearch.runtime.locks``, ...), a child of the ``tagsearch`` logger.

One way to say things: ``log`` (information), ``warning`` (something the person should look at;
kept by ``-q``) and ``debug`` (shown by ``-v``). The ``tagsearch`` logger writes each message as it
is, with nothing before it, on stderr (so that stdout stays clean for ``--json`` and ``predict``),
flushed at once, from INFO up: the text and stream of the plain prints to stderr it replaces. It
does so in every process that imports tagsearch (a command, a worker, a Ray task, a program that
calls the Python API) and hands no line on to the root logger, so a program that configures
logging gets no line twice (``logger.propagate = True`` and ``logger.removeHandler(HANDLER)``
route them there instead). The command line sets the level (``verbosity``: ``-q``, ``-v``), as
``optuna.logging.set_verbosity`` does for Optuna's logger.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

ROOT = "tagsearch"
FORMAT = "%(message)s"

logger = logging.getLogger(ROOT)


class StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` on ``sys.stderr`` as it is when a line is written, not as it was when the
    handler was made: pytest's capture, or a program that replaces ``sys.stderr``, gets the lines
    as a ``print`` to stderr would have. ``StreamHandler.emit`` flushes after every line."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


HANDLER = StderrHandler()
HANDLER.setFormatter(logging.Formatter(FORMAT))
logger.addHandler(HANDLER)
logger.setLevel(logging.INFO)
logger.propagate = False


def log(message: str) -> None:
    """One message (a line, or several) for the person running tagsearch, at INFO."""
    _emit(logging.INFO, message)


def warning(message: str) -> None:
    """A message about something going wrong that tagsearch rides out (a crashed worker, a storage
    outage, an unsafe setting), at WARNING: still shown with ``-q``."""
    _emit(logging.WARNING, message)


def debug(message: str) -> None:
    """A message that explains what tagsearch decided, for whoever debugs it, at DEBUG: shown with ``-v``."""
    _emit(logging.DEBUG, message)


def _emit(level: int, message: str) -> None:
    """``message`` on the logger named after the calling module (``tagsearch`` for a caller outside
    the package), with the caller's file and line on the record."""
    caller = sys._getframe(2).f_globals.get("__name__", ROOT)
    name = caller if caller.startswith(f"{ROOT}.") else ROOT
    logging.getLogger(name).log(level, message, stacklevel=3)


LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}  # -q, neither, -v


def level_for(quiet: bool, verbose: bool) -> int:
    """The ``tagsearch`` logger's level for the command line's ``-q`` / ``-v`` (not both)."""
    return LEVELS[int(verbose) - int(quiet)]


@contextmanager
def verbosity(level: int):
    """The ``tagsearch`` logger at ``level`` (``logging.WARNING``, ...) inside the block, as it was after it."""
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
