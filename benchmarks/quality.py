"""Does a study pay? The shipped specs, searched under one wall-clock budget, against a tuned baseline.

For each data set (the built-in corpus, and the robotics posts when ``../shared`` is present):

1. launch each shipped spec (``studies/dense.toml``, ``studies/tfidf.toml``, ``studies/encoder.toml``)
   on a fresh SQLite study with W workers and a timeout of BUDGET/3 (no new trial starts after it;
   the encoder study's time includes encoding the posts, once, into the study's embedding cache;
   the synthetic built-in corpus runs the first two, BUDGET/2 each: see ``SYNTHETIC_KINDS``);
2. retrain (``retrain_trial``, in this process) each study's best trial, and the seed's defaults
   (trial 0 of a one-trial study of the same spec without pruner, run here by ``run_study``: in the
   study itself the pruner may stop it), once without and once with ``refit`` (training +
   validation), to measure the refit;
3. the winner: the best of the studies' best trials by *validation* value of the metric;
4. the tuned baselines of ``tagsearch compare`` (``compare.fit_baseline``: TF-IDF + logistic
   regression, and TF-IDF ⊕ the encoder's embedding + logistic regression), without and with refit.

Prints a Markdown table of test micro-F1 and test Hamming loss, without and with refit, and the
validation value that chose, for every row; ``--json`` prints the rows as JSON too. Every step
must succeed. It calls the library (the Python API), as a notebook would.

    python -m benchmarks run quality                      # both data sets, 600 s per data set
    python -m benchmarks run quality --budget 120 --only robotics
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

import tagsearch as ts
from tagsearch.data import corpus as data
from tagsearch.results import compare
from tagsearch.results import folder as results
from tagsearch.data.builtin import BUILTIN_DATA
from tagsearch.study.search import embedding_dir
from tagsearch.study.spec import load_spec
from tagsearch.study.specfile import save_spec

ROBOTICS = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"
KINDS = ("dense", "tfidf", "encoder")
# The synthetic corpus is generated words: an encoder pretrained on real language has nothing to find
# there, and encoding its 47k posts would take the whole budget, so it gets the other two kinds.
SYNTHETIC_KINDS = ("dense", "tfidf")


def launch(spec: str, *, data: str, storage: str, study_name: str, workers: int, timeout: float) -> None:
    """``tagsearch launch`` on CPU workers; a failure stops the benchmark with its output."""
    # a process of its own, as a user runs it: launch takes over the terminal's signals for its workers
    argv = ["launch", spec, "--data", data, "--storage", storage, "--study-name", study_name, "--workers",
            str(workers), "--devices", "cpu", "--timeout", str(timeout), "--n-trials", "10000"]
    done = subprocess.run([sys.executable, "-m", "tagsearch.cli", *argv], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def quietly(function, *args, **kwargs):
    """``function(...)`` with its terminal output kept back (shown if it fails)."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return function(*args, **kwargs)
        except BaseException:
            sys.__stderr__.write(out.getvalue()[-2000:] + err.getvalue()[-4000:])
            raise


def study_counts(url: str, name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state.name for t in study.trials]
    return {s.lower(): states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}


def figures(folder: Path, suffix: str = "") -> dict:
    record = results.read_json(folder / results.METRICS, "metrics file")
    return {"validation": record["validation_value"], f"test_micro_f1{suffix}": record["test_micro_f1"],
            f"test_hamming_loss{suffix}": record["test_hamming_loss"]}


def run_data_set(label: str, path: str, args, work: Path) -> list[dict]:
    url = f"sqlite:///{work}/{label}.db"
    rows, bests = [], {}
    kinds = SYNTHETIC_KINDS if label == "builtin" else KINDS
    for kind in kinds:
        name, spec = f"quality-{label}-{kind}", f"studies/{kind}.toml"
        start = time.perf_counter()
        launch(spec, data=path, storage=url, study_name=name, workers=args.workers, timeout=args.budget / len(kinds))
        seconds = time.perf_counter() - start
        counts = study_counts(url, name)
        print(f"  {label} {kind}: {seconds:.0f} s, {counts}", flush=True)
        defaults_spec = save_spec({**tomllib.loads((REPO / spec).read_text()), "pruner": {"kind": "none"}},
                                  work / f"{kind}-defaults.toml")
        torch.set_num_threads(1)  # as `tagsearch worker --threads 1`
        quietly(ts.run_study, defaults_spec, ts.load_corpus(defaults_spec, path), n_trials=1, storage=url,
                study_name=f"{name}-defaults")
        for which, study, spec_path in (("best", name, REPO / spec), ("defaults", f"{name}-defaults", defaults_spec)):
            row = {"data": label, "row": f"{kind}: {'study best' if which == 'best' else 'seed defaults (trial 0)'}",
                   "study_seconds": round(seconds, 1), **counts}
            for refit in (False, True):
                out = work / "results" / f"{name}-{which}{'refit' if refit else 'no-refit'}"
                quietly(ts.retrain_trial, spec_path, data=path, storage=url, study_name=study, out=out, refit=refit)
                row.update(figures(out, "_refit" if refit else ""))
            rows.append(row)
            if which == "best":
                bests[kind] = row
    metric = load_spec(REPO / "studies" / "tfidf.toml").metric
    win = min(bests.values(), key=lambda r: r["validation"]) if metric == "hamming_loss" else \
        max(bests.values(), key=lambda r: r["validation"])
    rows.append({**win, "row": f"winner on validation ({win['row'].split(':')[0]})"})
    corpus = data.load_corpus(data.resolve_data(load_spec(REPO / "studies" / "tfidf.toml"), data.DataOptions(path)))
    for kind in ("tfidf", "encoder_tfidf") if "encoder" in kinds else ("tfidf",):
        base, refit = (compare.fit_baseline(corpus, metric, refit=r, kind=kind, embedding_dir=embedding_dir(url))
                       for r in (False, True))
        weight = "" if base.encoder_weight is None else f", encoder weight {base.encoder_weight:g}"
        rows.append({"data": label, "row": f"tuned baseline {compare.BASELINES[kind].split(': ')[1]} "
                                           f"(C={base.C:g}{weight})", "validation": base.validation_value,
                     "test_micro_f1": base.micro_f1, "test_hamming_loss": base.hamming_loss,
                     "test_micro_f1_refit": refit.micro_f1, "test_hamming_loss_refit": refit.hamming_loss})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| data | row | validation | test micro-F1 | test Hamming | refit: test micro-F1 | refit: test Hamming "
             "| trials (complete/pruned/fail) | study s |", "| --- " * 9 + "|"]
    for r in rows:
        trials = f"{r['complete']}/{r['pruned']}/{r['fail']}" if "complete" in r else ""
        lines.append(f"| {r['data']} | {r['row']} | {r['validation']:.4f} | {r['test_micro_f1']:.4f} | "
                     f"{r['test_hamming_loss']:.4f} | {r['test_micro_f1_refit']:.4f} | "
                     f"{r['test_hamming_loss_refit']:.4f} | {trials} | {r.get('study_seconds', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="study seconds per data set, all kinds together")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["builtin", "robotics"], help="one data set")
    parser.add_argument("--work", default="/tmp/tagsearch-quality", help="scratch folder (emptied first)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its handler writes past `quietly`
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [("builtin", BUILTIN_DATA)]
    if ROBOTICS.is_file():
        sets.append(("robotics", str(ROBOTICS)))
    else:
        print(f"note: {ROBOTICS} is absent; the robotics posts are skipped")
    rows = []
    for label, path in sets:
        if args.only in (None, label):
            rows += run_data_set(label, path, args, work)
            print(table(rows), flush=True)  # so far: each data set takes minutes
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
