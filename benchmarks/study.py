"""A whole study against the naive study: how long until each side has found a good configuration?

The naive side is what a user would write with the notebooks' code and Optuna alone: an objective
around ``benchmarks/seed_path.py`` that prepares its data as the notebook does in every trial
(read the CSV, clean every post with Python regexes, split, fit the vocabulary or the vectoriser),
trains the notebook's model with the notebook's loop (per-batch tokenisation, dense AdamW,
``DataLoader`` workers for TF-IDF) at torch's default threads, evaluates validation Hamming loss at
the notebook's 0.5 threshold every epoch, reports it to a ``MedianPruner`` and stops early after
``patience`` epochs without improvement. Its search space is the shipped spec's, restricted to
what the notebook's code can express (``NAIVE_KNOBS``; always two hidden blocks); TPE with the
spec's seed and startup trials; one SQLite study shared by 2 processes.

The tagsearch side is ``tagsearch launch SPEC --workers 2 --devices cpu`` on the shipped spec, with
``folds = 1`` so that both sides score the same validation posts, and the same ``max_epochs``.

Corpus size and trials: the built-in 47k corpus itself, 4 trials of at most 4 epochs, then the
robotics posts; the full run ends in about 25 minutes. On 47k one naive trial takes 1-12 minutes (a
100,000-feature first layer densified per post, dense AdamW over it, 950 steps an epoch at batch
32), so 4 trials take ~19 minutes (2026-11-22) and 10 would take about an hour; ``--posts N`` uses N
posts of the built-in generator instead (the earlier default, 12,000, with ``--n-trials 8``).

For each side: the wall time to finish N trials (complete + pruned; Optuna's ``MaxTrialsCallback``
lets the naive side's two processes overshoot N by a trial or so, as it would for a user), the best validation Hamming
loss of a complete trial, and the wall time it first reached the naive side's final best ("time
to quality", from the trials' completion times in the storage).

    python -m benchmarks run study                  # the built-in 47k corpus and robotics, 4 trials each
    python -m benchmarks run study --only robotics  # one of them
    python -m benchmarks run study --posts 12000 --n-trials 8   # 12,000 posts of the built-in generator
    python -m benchmarks run study --quick          # an 800-post synthetic corpus, 3 trials, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path

import optuna

from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.study.spec import PARAMS
from tagsearch.study.specfile import save_spec
from tagsearch.data.synth import write_corpus

REPO = Path(__file__).resolve().parents[1]
ROBOTICS = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"
NAIVE_KNOBS = ("embedding_dim", "hidden1", "hidden2", "dropout", "lr", "weight_decay", "batch_size",
               "max_features", "ngram_max", "min_df", "sublinear_tf")
QUICK_POSTS = 800
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


# ---------------------------------------------------------------------------------------------
# The naive side: Optuna around the notebooks' code


def naive_suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for name, s in space.items():
        if "choices" in s:
            params[name] = trial.suggest_categorical(name, s["choices"])
        elif PARAMS[name].type is int:
            params[name] = trial.suggest_int(name, s["low"], s["high"], step=s.get("step", 1),
                                             log=s.get("log", False))
        else:
            params[name] = trial.suggest_float(name, s["low"], s["high"], step=s.get("step"),
                                               log=s.get("log", False))
    return params


def naive_objective(trial: optuna.Trial, kind: str, data: str, space: dict, max_epochs: int, patience: int):
    from benchmarks import seed_path  # torch: only the naive workers train (the driver stays light)

    p = {**seed_path.SEED_PARAMS, **naive_suggest(trial, space)}
    texts, labels, _ = seed_path.load_posts(data, p["top_k"])  # every trial, as a notebook re-runs its cells
    train, val, _ = seed_path.seed_split(len(texts))
    trainer = seed_path.TRAINERS[kind]([texts[i] for i in train], labels[train], [texts[i] for i in val],
                                       labels[val], p)
    best, best_epoch = math.inf, 0
    for epoch in range(1, max_epochs + 1):
        value = trainer.epoch()["val_hamming_loss"]
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if value < best:
            best, best_epoch = value, epoch
        elif epoch - best_epoch >= patience:
            break
    return best


def naive_worker(args) -> int:
    """One of the naive side's processes (``--naive-worker``): trials until the study has N."""
    raw = tomllib.loads(Path(args.spec).read_text())
    space = {k: v for k, v in raw["search"].items() if k in NAIVE_KNOBS}
    sampler = optuna.samplers.TPESampler(seed=raw["sampler"]["seed"] + args.naive_worker,
                                         n_startup_trials=raw["sampler"]["n_startup_trials"])
    study = optuna.load_study(study_name="naive", storage=args.storage, sampler=sampler,
                              pruner=optuna.pruners.MedianPruner())
    study.optimize(lambda t: naive_objective(t, args.kind, args.data, space, args.max_epochs, args.patience),
                   callbacks=[optuna.study.MaxTrialsCallback(args.n_trials, states=FINISHED)])
    return 0


def run_naive(spec: Path, kind: str, data: str, url: str, n_trials: int, max_epochs: int, patience: int) -> None:
    optuna.create_study(study_name="naive", storage=url, direction="minimize")
    logs = [spec.with_name(f"{spec.stem}-naive-{worker}.log") for worker in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.study", "--naive-worker", str(worker), "--spec", str(spec),
                                 "--kind", kind, "--data", data, "--storage", url, "--n-trials", str(n_trials),
                                 "--max-epochs", str(max_epochs), "--patience", str(patience)],
                                stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=REPO)
               for worker, log in enumerate(logs)]
    for worker, log in zip(workers, logs):
        if worker.wait() != 0:
            raise SystemExit(f"a naive worker failed ({worker.returncode}):\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------------------------------------
# The tagsearch side


def run_tagsearch(spec: Path, data: str, url: str, n_trials: int) -> None:
    command = [sys.executable, "-m", "tagsearch.cli", "launch", str(spec), "--workers", "2", "--devices", "cpu",
               "--data", data, "--storage", url, "--study-name", "tagsearch", "--n-trials", str(n_trials)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tagsearch launch failed ({done.returncode}):\n{done.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------
# Figures


def timeline(url: str, name: str, started: datetime) -> tuple[list[tuple[float, float]], dict]:
    """(seconds since ``started``, best complete value so far) at each finished trial, and counts."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False, states=FINISHED)
    points, best = [], math.inf
    for trial in sorted(trials, key=lambda t: t.datetime_complete):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = min(best, trial.value)
        points.append(((trial.datetime_complete - started).total_seconds(), best))
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return points, {"complete": complete, "pruned": len(trials) - complete}


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, best in points if best <= target), None)


def compare_on(label: str, data: str, kind: str, n_trials: int, max_epochs: int, tmp: Path, say) -> dict:
    raw = tomllib.loads((REPO / "studies" / f"{kind}.toml").read_text())
    raw["training"].update(max_epochs=max_epochs, folds=1)
    spec = save_spec(raw, tmp / f"{label}-{kind}.toml")
    url = f"sqlite:///{tmp / f'{label}-{kind}.db'}"
    sides = {}
    for side, run in (("naive", lambda: run_naive(spec, kind, data, url, n_trials, max_epochs,
                                                  raw["training"]["patience"])),
                      ("tagsearch", lambda: run_tagsearch(spec, data, url, n_trials))):
        say(f"  {label}, {kind}: {side} side, {n_trials} trials ...")
        started, start = datetime.now(), time.perf_counter()
        run()
        points, counts = timeline(url, side, started)
        sides[side] = {**counts, "seconds": time.perf_counter() - start, "points": points,
                       "best": points[-1][1] if points else math.inf}
    target = sides["naive"]["best"]
    if not math.isfinite(target):
        raise SystemExit(f"{label}: the naive side completed no trial (all pruned); run more trials")
    for side in sides.values():
        side["time_to_quality"] = time_to(side["points"], target)
    naive_t, ours_t = sides["naive"]["time_to_quality"], sides["tagsearch"]["time_to_quality"]
    ratio = naive_t / ours_t if naive_t and ours_t else None
    return {"label": label, "kind": kind, "n_trials": n_trials, "max_epochs": max_epochs, "sides": sides,
            "time_to_quality_ratio": ratio}


def render(rows: list[dict]) -> str:
    lines = ["| corpus | side | trials (complete/pruned) | wall s | best val Hamming | time to the naive best |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        for name, side in row["sides"].items():
            reached = side["time_to_quality"]
            lines.append(f"| {row['label']} ({row['kind']}) | {name} | {side['complete']}/{side['pruned']} | "
                         f"{side['seconds']:.0f} | {side['best']:.4f} | "
                         f"{'not reached' if reached is None else f'{reached:.0f} s'} |")
    lines.append("")
    for row in rows:
        ratio = row["time_to_quality_ratio"]
        lines.append(f"- {row['label']}: time to quality, naive / tagsearch = "
                     f"{'n/a (tagsearch did not reach it)' if ratio is None else f'{ratio:.1f}x'}")
    return "\n".join(lines)


def builtin_corpus(posts: int, tmp: Path) -> tuple[str, str]:
    """(label, path) of the built-in corpus, or of ``posts`` posts of its generator."""
    if posts == BUILTIN_POSTS:
        return "built-in 47k", ensure_corpus(str(REPO / BUILTIN_PATH), BUILTIN_POSTS)
    path = tmp / f"synthetic-{posts}.csv"
    write_corpus(path, n_posts=posts, seed=0)
    return f"built-in generator, {posts:,} posts", str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_POSTS} synthetic posts, 3 trials, 2 epochs")
    parser.add_argument("--kind", choices=("dense", "tfidf"), default="tfidf")
    parser.add_argument("--posts", type=int, default=BUILTIN_POSTS,
                        help=f"posts of the built-in generator (default {BUILTIN_POSTS}: the built-in corpus itself)")
    parser.add_argument("--only", choices=("builtin", "robotics"), help="one corpus instead of both")
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--max-epochs", type=int, default=4, help="both sides (the shipped specs: 30)")
    parser.add_argument("--json", action="store_true", help="the rows as JSON after the table")
    parser.add_argument("--naive-worker", type=int, help=argparse.SUPPRESS)
    for hidden in ("--spec", "--data", "--storage", "--patience"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, type=int if hidden == "--patience" else str)
    args = parser.parse_args(argv)
    if args.naive_worker is not None:
        return naive_worker(args)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.quick:
            path = tmp / "quick.csv"
            write_corpus(path, n_posts=QUICK_POSTS, seed=3)
            corpora = [(f"synthetic {QUICK_POSTS}", str(path))]
            args.n_trials, args.max_epochs = 3, 2
        else:
            corpora = [] if args.only == "robotics" else [builtin_corpus(args.posts, tmp)]
            if args.only != "builtin" and ROBOTICS.is_file():
                corpora.append(("robotics", str(ROBOTICS)))
            elif args.only != "builtin":
                say(f"  robotics posts not found at {ROBOTICS}: skipped (they are shared data, not in the repo)")
            if not corpora:
                raise SystemExit("no corpus to run: --only robotics needs the robotics posts")
        for label, data in corpora:
            rows.append(compare_on(label, data, args.kind, args.n_trials, args.max_epochs, tmp, say))
    print(render(rows))
    if args.json:
        print(json.dumps([{**r, "sides": {k: {kk: vv for kk, vv in v.items() if kk != "points"}
                                          for k, v in r["sides"].items()}} for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
