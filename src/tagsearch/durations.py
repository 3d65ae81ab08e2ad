"""How a number of seconds is written for people, in the three forms tagsearch shows: a running
clock (``clock_text``: the progress line, tune's search time), a cost or a budget rounded to what
matters (``span_text``: the planner's verdicts) and how long a whole run took (``minutes_text``:
the last line of ``tune`` and ``demo``).
"""

from __future__ import annotations

import math


def clock_text(seconds: float) -> str:
    """``MM:SS`` (``H:MM:SS`` from an hour): ``75`` → ``"01:15"``, ``3725`` → ``"1:02:05"``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes:02d}:{secs:02d}"


def span_text(seconds: float) -> str:
    """``75`` → ``"1m15s"``, ``300`` → ``"5m"``, ``3900`` → ``"1h05m"``; ``inf`` → ``"unlimited"``."""
    if not math.isfinite(seconds):
        return "unlimited"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def minutes_text(seconds: float) -> str:
    """Whole minutes and seconds: ``75`` → ``"1m15s"``, ``45`` → ``"0m45s"``, ``3725`` → ``"62m05s"``."""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
