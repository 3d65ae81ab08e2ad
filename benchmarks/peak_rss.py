"""Run a command and write its peak resident memory (MB) to a file: ``peak_rss.py OUT -- CMD ...``.

A child's ``ru_maxrss`` includes the memory of the process it was forked from (Linux keeps the
high-water mark across ``exec``), so ``run.py`` (hundreds of MB) launches children through this
small stdlib-only process instead of directly.
"""

import json
import os
import subprocess
import sys


def main(argv=None) -> int:
    out, separator, *command = sys.argv[1:] if argv is None else argv
    if separator != "--" or not command:
        raise SystemExit("usage: peak_rss.py OUT -- CMD [ARG ...]")
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    with open(out, "w") as handle:
        json.dump({"peak_rss_mb": usage.ru_maxrss / 1024}, handle)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
