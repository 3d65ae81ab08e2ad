"""Progress messages for people: stderr, so that stdout stays clean for ``--json`` and ``predict``."""

import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
