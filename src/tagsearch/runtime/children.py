"""Worker processes that never outlive whoever started them: ``spawn`` starts a command in a
session of its own (a terminal's Ctrl-C reaches only its parent, which forwards it once), its
output appended to an open log file, and on Linux a SIGTERM for it when its parent dies, even by
SIGKILL. Both a local ``launch`` and a worker's Ray task start their workers so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import IO


def spawn(command: list[str], env: dict, output: IO, cwd: str | None = None) -> subprocess.Popen:
    """``command`` with ``env``, stdout and stderr into ``output``, no stdin, in ``cwd`` (default: ours)."""
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)


def die_with_parent() -> None:
    """Linux, in the child before it runs: SIGTERM when the parent dies (PR_SET_PDEATHSIG), so that a
    killed ``launch`` or a force-cancelled Ray task leaves no orphaned worker."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
