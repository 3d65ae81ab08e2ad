"""Writing a results directory atomically: ``atomic_dir`` and the swap it ends with.

``atomic_dir`` writes a directory atomically (a temp directory beside it, swapped into place in one
step), so an interrupted run never leaves a half-written results directory, and a replaced one is
the old or the new directory at every instant. It writes manifest.json into every folder it
publishes, and replaces only a directory that is a results folder (one with a manifest.json, or a
config.json of an older tagsearch) or an empty one: a mistyped ``--out`` is refused, not deleted.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tagsearch.errors import UserError
from tagsearch.results.layout import CONFIG, FORMAT, MANIFEST, MANIFEST_KIND, WEIGHTS, sha256, write_json


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yield a fresh temp directory beside ``out``; on success it becomes ``out`` in one atomic step,
    so ``out`` is the complete old directory or the complete new one at every instant, whatever kills
    the process (SIGKILL, power loss after the rename is journaled). On an error the temp directory
    is deleted and ``out`` is untouched.

    An existing ``out`` is swapped with ``renameat2(RENAME_EXCHANGE)`` (Linux ≥ 3.15 on ext4, xfs,
    btrfs, tmpfs, ...); then the old tree, now under the temp name, is deleted. Where the exchange
    is unavailable, ``out`` becomes a symlink to a versioned directory ``.out.v-*`` and each replace
    is one ``os.replace`` of that symlink (a real directory left by an older tagsearch is converted
    once, by the exchange if possible, else with a rename whose gap is the only non-atomic moment).
    Leftovers of a killed run (``.out.tmp-*``, ``.out.v-*`` no longer linked) are removed by the next."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        write_manifest(tmp)
        tmp.chmod(0o755)
        check_replaceable(out)  # still nothing else there (checked again just before the swap)
        _fsync_tree(tmp)
        _checkpoint("written")
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(out: str | os.PathLike) -> None:
    """A UserError unless ``out`` is nothing, an empty directory, or a tagsearch results folder:
    the only things ``atomic_dir`` may replace (and delete the old tree of)."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise UserError(f"results path {str(out)!r} is a file; expected a directory (or nothing) there")
    if is_results_folder(out) or not any(out.iterdir()):
        return
    raise UserError(f"results path {str(out)!r} is a directory that is not a tagsearch results folder (no "
                    f"{MANIFEST}); refusing to replace it, expected a new path, an empty directory or a results "
                    f"folder written by tagsearch")


def is_results_folder(folder: Path) -> bool:
    """A folder written by ``atomic_dir`` (its manifest), or by a tagsearch from before manifests
    (a config.json of the results format beside its weights)."""
    if (folder / MANIFEST).is_file():
        try:
            return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
        except (OSError, ValueError, AttributeError):
            return False
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT and isinstance(config.get("sha256"), dict) \
        and (folder / WEIGHTS).is_file()


def write_manifest(folder: Path) -> None:
    """manifest.json: the marker of a results folder and the sha256 of every file in it (config.json
    included), by path relative to ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MANIFEST)
    write_json(folder / MANIFEST, {"kind": MANIFEST_KIND, "format": FORMAT,
                                   "sha256": {p.relative_to(folder).as_posix(): sha256(p) for p in files}})


RENAME_EXCHANGE = 2
AT_FDCWD = -100
_FORCE_SYMLINK_ENV = "TAGSEARCH_NO_RENAME_EXCHANGE"  # tests: exercise the symlink fallback on Linux


def _checkpoint(step: str) -> None:
    """Between two steps of a results swap (tests kill the process here)."""


def _install(tmp: Path, out: Path) -> None:
    """Make ``tmp`` the new ``out`` atomically; then delete the old tree."""
    if not os.path.lexists(out):
        if _symlink_mode(out):
            _link_version(tmp, out)
        else:
            os.rename(tmp, out)  # nothing to keep: a plain rename is atomic
            _fsync_dir(out.parent)
        _checkpoint("installed")
        return
    if out.is_symlink() or not _exchange(tmp, out):
        _link_version(tmp, out)
        return
    # tmp now holds the old tree (or, if out was a symlink, the old link: see _link_version).
    _fsync_dir(out.parent)
    _checkpoint("exchanged")
    _remove_old(tmp)
    _checkpoint("cleaned")


def _link_version(tmp: Path, out: Path) -> None:
    """Fallback: ``out`` is a symlink to ``.out.v-*``; replace the link in one ``os.replace``."""
    version = Path(tempfile.mkdtemp(prefix=f".{out.name}.v-{os.getpid()}-", dir=out.parent))
    os.rename(tmp, version)  # rename over the empty directory mkdtemp made (same file system)
    _checkpoint("versioned")
    link = out.with_name(f".{out.name}.link-{os.getpid()}")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(version.name, link)
    old = os.readlink(out) if out.is_symlink() else None
    if os.path.lexists(out) and not out.is_symlink():
        # A real directory from before: the exchange is unavailable, so move it aside first (the
        # one gap of the fallback, once per results directory).
        aside = out.with_name(f".{out.name}.v-old-{os.getpid()}")
        os.rename(out, aside)
        _checkpoint("moved-aside")
        os.replace(link, out)
        old = aside.name
    else:
        os.replace(link, out)
    _fsync_dir(out.parent)
    _checkpoint("exchanged")
    if old is not None and "/" not in old:
        _remove_old(out.parent / old)
    _checkpoint("cleaned")


def _symlink_mode(out: Path) -> bool:
    return os.environ.get(_FORCE_SYMLINK_ENV) == "1" or _renameat2() is None


def _renameat2():
    """libc's renameat2, or None (not Linux, old glibc)."""
    if os.environ.get(_FORCE_SYMLINK_ENV) == "1" or not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the OS or file system cannot."""
    import ctypes

    function = _renameat2()
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # file system (or seccomp filter) without RENAME_EXCHANGE: use the symlink fallback
    raise OSError(error, f"renameat2({str(a)!r}, {str(b)!r}, RENAME_EXCHANGE): {os.strerror(error)}")


def _remove_old(path: Path) -> None:
    """Delete an old tree: a directory, or a symlink (then also the version it pointed to)."""
    if path.is_symlink():
        target = os.readlink(path)
        os.unlink(path)
        if "/" not in target and target.startswith("."):
            shutil.rmtree(path.parent / target, ignore_errors=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _sweep_leftovers(out: Path) -> None:
    """Remove what a killed earlier run left beside ``out``: temp directories of dead processes,
    versions no longer linked, stray links. Never the live version, never another run's temp."""
    live = os.readlink(out) if out.is_symlink() else None
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        kind, _, tail = path.name[len(out.name) + 2:].partition("-")
        owner = tail.removeprefix("old-").split("-", 1)[0]
        if kind not in ("tmp", "v", "link") or path.name == live or _pid_alive(owner):
            continue  # not ours, the live version, or another retrain of this directory is running
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(text) != os.getpid()


def _fsync_tree(folder: Path) -> None:
    """Flush every file of the new tree before it becomes visible (a crash after the swap must not
    leave empty files under the new name)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
