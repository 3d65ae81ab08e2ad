"""run.py's search section (``--search``; needs ``tagsearch.workers``, the search layer).

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
from pathlib import Path

import optuna

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPECS = {"dense": REPO / "studies" / "dense.toml", "tfidf": REPO / "studies" / "tfidf.toml"}


def tagsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagsearch.cli", *args]


def study_figures(url: str, name: str) -> dict:
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    finished = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
    complete = [t for t in trials if t.state == state.COMPLETE]
    return {"finished": len(finished), "complete": len(complete),
            "pruned": sum(t.state == state.PRUNED for t in trials),
            "failed": sum(t.state == state.FAIL for t in trials),
            "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) for t in finished),
            "best": min((t.value for t in complete), default=None)}


def run_study(command: list[str], url: str, name: str, timeout: float | None = None) -> dict:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=None if timeout is None else timeout * 3 + 600, check=False)
    seconds = time.perf_counter() - start
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
    import pruners

    figures = {}
    spec_text = SPECS["tfidf"].read_text()
    kind = re.search(r'(?m)^kind = "(\w+)"', spec_text[spec_text.index("[pruner]"):]).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        for label, pruner in ((f"{kind} pruner (the spec's)", None), ("no pruning", 'kind = "none"')):
            spec = Path(tmp) / f"{'spec' if pruner is None else 'none'}.toml"
            spec.write_text(pruners.spec_variant(spec_text, pruner))
            url, name = f"sqlite:///{spec.with_suffix('.db')}", "pruning"
            command = tagsearch("launch", str(spec), "--workers", "2", "--devices", "cpu", "--data", data_path,
                                "--storage", url, "--study-name", name, "--n-trials", str(n_trials))
            figures[label] = run_study(command, url, name)
            f = figures[label]
            say(f"    {label}: {f['finished']} trials ({f['pruned']} pruned), {f['epochs']} epochs, "
                f"{f['seconds']:.0f}s, best {f['best']}")
    return figures


def run(args, say) -> dict:
    from tagsearch.builtin import ensure_builtin
    from tagsearch.spec import BUILTIN_PATH

    data_path = ensure_builtin(str(REPO / BUILTIN_PATH))
    say(f"  throughput on studies/dense.toml, {args.search_window:.0f}s window each")
    result = {"throughput": throughput(data_path, args.search_window, say)}
    say(f"  pruning on a {args.search_trials}-trial studies/tfidf.toml study")
    result["pruning"] = pruning(data_path, args.search_trials, say)
    return result
