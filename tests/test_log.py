"""Messages through the ``tagsearch`` logger (log.py): by default each one alone on stderr as the
old prints wrote it; ``-q`` keeps the warnings, ``-v`` adds the debug lines (in-process, through
``cli.main``); a library module's lines carry its name; and the three ways of writing seconds."""

from __future__ import annotations

import logging

import pytest

from tagsearch import __version__, durations
from tagsearch.cli import main
from tagsearch.log import debug, level_for, log, logger, verbosity, warning
from tagsearch.runtime import outages


def synth(capsys, tmp_path, *flags):
    code = main([*flags, "data", "synth", "--out", str(tmp_path / "posts.csv"), "--posts", "20"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_by_default_a_message_is_its_text_alone_on_stderr(capsys):
    log("first line\n  second line")
    warning("warning: watch out")
    debug("not shown")
    assert capsys.readouterr() == ("", "first line\n  second line\nwarning: watch out\n")


def test_quiet_hides_the_information_lines(capsys, tmp_path):
    _, err = synth(capsys, tmp_path)
    assert err == f"wrote 20 synthetic posts to {tmp_path / 'posts.csv'}\n"
    _, err = synth(capsys, tmp_path, "-q")
    assert err == ""
    _, err = synth(capsys, tmp_path, "--quiet")
    assert err == ""


def test_quiet_keeps_the_warnings(capsys):
    with verbosity(level_for(quiet=True, verbose=False)):
        log("progress")
        warning("warning: something to look at")
    assert capsys.readouterr().err == "warning: something to look at\n"


def test_verbose_shows_the_debug_lines(capsys, tmp_path):
    _, err = synth(capsys, tmp_path)
    assert "on Python" not in err
    _, err = synth(capsys, tmp_path, "-v")
    lines = err.splitlines()
    assert lines[0].startswith(f"tagsearch {__version__} on Python ") and lines[0].endswith(": synth")
    assert lines[1:] == [f"wrote 20 synthetic posts to {tmp_path / 'posts.csv'}"]


def test_quiet_and_verbose_together_are_a_usage_error(capsys, tmp_path):
    assert main(["-q", "-v", "data", "synth", "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: argument -v/--verbose: not allowed with argument -q/--quiet")


def test_the_command_line_leaves_the_level_as_it_found_it(capsys, tmp_path):
    synth(capsys, tmp_path, "-q")
    assert logger.level == logging.INFO
    synth(capsys, tmp_path, "-v")
    assert logger.level == logging.INFO


def test_a_library_module_logs_through_the_tagsearch_logger(monkeypatch, caplog, capsys):
    """A storage outage's retry line: a WARNING of ``tagsearch.runtime.outages``, a child of
    ``tagsearch``, with the same text on stderr as before."""
    failures = iter([ConnectionError("refused")])

    def flaky():
        for error in failures:
            raise error
        return "done"

    monkeypatch.setattr(outages.time, "sleep", lambda seconds: None)
    with caplog.at_level(logging.DEBUG, logger="tagsearch"):
        assert outages.Outages(limit=60).call("a test", flaky) == "done"
    retry, back = caplog.records
    assert retry.name == back.name == "tagsearch.runtime.outages"
    assert (retry.levelno, back.levelno) == (logging.WARNING, logging.INFO)
    assert retry.filename == back.filename == "outages.py"
    assert capsys.readouterr().err.splitlines() == [
        "storage unreachable during a test (ConnectionError: refused); retry in 0.5 s (down 0 s, giving up after 60 s)",
        back.getMessage()]
    assert back.getMessage().startswith("storage reachable again after ")


@pytest.mark.parametrize("seconds, clock, span, minutes", [
    (0, "00:00", "0s", "0m00s"),
    (45, "00:45", "45s", "0m45s"),
    (75, "01:15", "1m15s", "1m15s"),
    (300, "05:00", "5m", "5m00s"),
    (3725, "1:02:05", "1h02m", "62m05s"),
])
def test_seconds_are_written_in_three_forms(seconds, clock, span, minutes):
    assert durations.clock_text(seconds) == clock
    assert durations.span_text(seconds) == span
    assert durations.minutes_text(seconds) == minutes


def test_an_unlimited_span():
    assert durations.span_text(float("inf")) == "unlimited"
