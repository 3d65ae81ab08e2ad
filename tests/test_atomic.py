"""``atomic.atomic_dir``: replacing a results directory leaves the complete old or the complete new
directory at every instant, whatever kills the process.

Each kill test forks a child that writes a new directory over an existing one and dies with
``os._exit`` at one step of the swap (``atomic._checkpoint``), or in the middle of writing; the
parent then checks that ``out`` is whole (every file, one version) and that the next run cleans up
what the dead one left. Both the ``renameat2(RENAME_EXCHANGE)`` path and the symlink fallback run.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tagsearch.results import atomic, folder as results

FILES = ("model.safetensors", "config.json", "metrics.json", "report.md")
EXCHANGE_STEPS = ("writing", "written", "exchanged", "cleaned")
SYMLINK_STEPS = ("writing", "written", "versioned", "exchanged", "cleaned")
FRESH_STEPS = ("writing", "written", "installed")


def write_version(folder: Path, version: str) -> None:
    for name in FILES:
        (folder / name).write_text(f"{version}\n")


def version_of(out: Path) -> str:
    """The one version ``out`` holds; fails if it is missing, partial or mixed."""
    assert out.is_dir(), f"{out} is missing"
    found = {name: (out / name).read_text().strip() if (out / name).is_file() else None for name in FILES}
    assert len(set(found.values())) == 1 and None not in found.values(), found
    return found[FILES[0]]


def replace(out: Path, version: str, die_at: str | None = None) -> None:
    """atomic_dir(out) with ``version``'s files, dying at step ``die_at``."""
    if die_at:
        atomic._checkpoint = lambda step: os._exit(9) if step == die_at else None
    with atomic.atomic_dir(out) as folder:
        write_version(folder, version)
        if die_at == "writing":
            (folder / FILES[0]).write_text("half")
            os._exit(9)


def killed_replace(out: Path, version: str, step: str) -> None:
    """``replace`` in a forked child that dies at ``step``."""
    pid = os.fork()
    if pid == 0:  # child: file operations only, then _exit
        try:
            replace(out, version, step)
        finally:
            os._exit(3)  # the step was never reached
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, f"the child did not reach step {step!r}"


def exchange_available(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return atomic._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


@pytest.fixture(params=["exchange", "symlink"])
def mode(request, monkeypatch, tmp_path):
    if request.param == "symlink":
        monkeypatch.setenv(atomic._FORCE_SYMLINK_ENV, "1")
    elif not exchange_available(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the symlink fallback is used")
    return request.param


def test_kill_at_every_step_of_a_replace_leaves_old_or_new(mode, tmp_path):
    steps = EXCHANGE_STEPS if mode == "exchange" else SYMLINK_STEPS
    seen = {}
    for step in steps:
        out = tmp_path / step / "tfidf"
        out.parent.mkdir()
        replace(out, "old")
        if mode == "symlink":
            replace(out, "old")  # out is now a link to a version: the fallback's steady state
            assert out.is_symlink()
        killed_replace(out, "new", step)
        seen[step] = version_of(out)
        # The next run finishes the job and removes every leftover of the dead one.
        replace(out, "next")
        assert version_of(out) == "next"
        left = sorted(p.name for p in out.parent.iterdir())
        expected = ["tfidf"] if mode == "exchange" else sorted(["tfidf", os.readlink(out)])
        assert left == expected, left
    # Up to the atomic step the old directory is there, from it on the new one.
    switch = steps.index("exchanged")
    assert [seen[s] for s in steps] == ["old"] * switch + ["new"] * (len(steps) - switch), seen


def test_kill_while_creating_a_new_directory_leaves_none_or_new(mode, tmp_path):
    for step in FRESH_STEPS:
        out = tmp_path / step / "dense"
        out.parent.mkdir()
        killed_replace(out, "new", step)
        if step == "installed":
            assert version_of(out) == "new"
        else:
            assert not os.path.lexists(out)
        replace(out, "next")
        assert version_of(out) == "next"
        assert len(list(out.parent.iterdir())) == (1 if mode == "exchange" else 2)


def test_a_reader_never_misses_the_directory_during_replacements(mode, tmp_path):
    """What the old rename-aside-then-rename swap got wrong: a reader polling between its two steps
    found no directory. Poll while replacing it 40 times: every read finds the file, whole. (Files read
    one by one by path may come from two versions; ``results.load`` refuses such a mix by checksum.)"""
    out = tmp_path / "results" / "dense"
    replace(out, "v0")
    stop, misses, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                for name in FILES:
                    text = (out / name).read_text()
                    if not (text.startswith("v") and text.endswith("\n")):
                        misses.append(f"partial {name}: {text!r}")
            except FileNotFoundError as exc:
                misses.append(str(exc))
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(1, 41):
            replace(out, f"v{index}")
    finally:
        stop.set()
        thread.join()
    assert not misses, f"{len(misses)} of {reads[0]} reads missed: {misses[:3]}"
    assert version_of(out) == "v40" and reads[0] > 40


def test_an_error_while_writing_keeps_the_old_directory_and_no_temp(mode, tmp_path):
    out = tmp_path / "r" / "tfidf"
    replace(out, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(out) as folder:
            write_version(folder, "new")
            raise KeyboardInterrupt
    assert version_of(out) == "old"
    assert len(list(out.parent.iterdir())) == (1 if mode == "exchange" else 2)


def test_results_behind_a_symlink_are_listed_by_compare(monkeypatch, tmp_path):
    from tagsearch.results import compare

    monkeypatch.setenv(atomic._FORCE_SYMLINK_ENV, "1")
    monkeypatch.chdir(tmp_path)
    out = Path("results") / "tfidf"
    replace(out, "a")
    replace(out, "b")
    (out / results.CONFIG).write_text("{}")
    assert out.is_symlink() and compare.default_folders() == [out]
