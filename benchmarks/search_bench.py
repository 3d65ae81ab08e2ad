"""run.py's search section (``--search``; needs ``tagsearch.study.workers``, the search layer).

1. Throughput: ``tagsearch launch --workers 2 --devices cpu`` (one thread per worker) against one
   ``tagsearch worker --threads 2``, each for the same wall-clock window on a fresh study of
   studies/dense.toml; finished (complete + pruned) trials per minute.
2. Pruning: the same 30-trial TF-IDF study (studies/tfidf.toml, 2 workers) with the spec's pruner
   and with ``[pruner] kind = "none"``; total epochs trained, wall time and best value.

Every study lives in a temporary SQLite file, so nothing here touches storage/.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import optuna

from tagsearch.study import search
from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.study.specfile import save_spec

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPECS = {"dense": REPO / "studies" / "dense.toml", "tfidf": REPO / "studies" / "tfidf.toml"}


def tagsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagsearch.cli", *args]


def study_figures(url: str, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=url)
    counts = search.progress(study)
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED))
    return {"finished": counts.finished, "complete": counts.complete, "pruned": counts.pruned,
            "failed": counts.failed, "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) for t in finished),
            "best": counts.best_value}


def run_study(command: list[str], url: str, name: str, timeout: float | None = None) -> dict:
    """Run ``command`` (a ``tagsearch launch`` or ``worker``); a non-zero exit is an error, with its stderr."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=None if timeout is None else timeout * 3 + 600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**study_figures(url, name), "seconds": seconds}


def throughput(data_path: str, window: float, say) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("launch 2 workers x 1 thread", ["launch", "--workers", "2", "--devices", "cpu"]),
                             ("1 worker x 2 threads", ["worker", "--threads", "2"])):
            slug = re.sub(r"\W+", "-", label)
            url, name = f"sqlite:///{tmp}/{slug}.db", "throughput"
            command = tagsearch(extra[0], str(SPECS["dense"]), *extra[1:], "--data", data_path, "--storage", url,
                                "--study-name", name, "--n-trials", "1000", "--timeout", str(window))
            result = run_study(command, url, name, window)
            result["trials_per_minute"] = result["finished"] / (result["seconds"] / 60)
            figures[label] = result
            say(f"    {label}: {result['finished']} trials in {result['seconds']:.0f}s = "
                f"{result['trials_per_minute']:.2f}/min")
    return figures


def pruning(data_path: str, n_trials: int, say) -> dict:
    """The spec's pruner against none (``benchmarks/pruners.py`` compares other settings and seeds)."""
    figures = {}
    raw = tomllib.loads(SPECS["tfidf"].read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for label, pruner in ((f"{raw['pruner']['kind']} pruner (the spec's)", raw["pruner"]),
                              ("no pruning", {"kind": "none"})):
            spec = save_spec({**raw, "pruner": pruner}, Path(tmp) / f"{pruner['kind']}-{len(figures)}.toml")
            url, name = f"sqlite:///{spec.with_suffix('.db')}", "pruning"
            command = tagsearch("launch", str(spec), "--workers", "2", "--devices", "cpu", "--data", data_path,
                                "--storage", url, "--study-name", name, "--n-trials", str(n_trials))
            figures[label] = run_study(command, url, name)
            f = figures[label]
            say(f"    {label}: {f['finished']} trials ({f['pruned']} pruned), {f['epochs']} epochs, "
                f"{f['seconds']:.0f}s, best {f['best']}")
    return figures


def run(args, say) -> dict:
    data_path = ensure_corpus(str(REPO / BUILTIN_PATH), BUILTIN_POSTS)
    say(f"  throughput on studies/dense.toml, {args.search_window:.0f}s window each")
    result = {"throughput": throughput(data_path, args.search_window, say)}
    say(f"  pruning on a {args.search_trials}-trial studies/tfidf.toml study")
    result["pruning"] = pruning(data_path, args.search_trials, say)
    return result
