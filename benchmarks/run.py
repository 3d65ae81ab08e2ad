"""tagsearch against the seed notebooks' training path (``benchmarks/seed_path.py``), on this machine.

    python -m benchmarks run run                      # everything (how long: see BENCHMARKS.md)
    python -m benchmarks run run --quick              # a 6,000-post corpus, 2 epochs: a smoke run
    python -m benchmarks run run --only dense --epochs 3 --json

Sections (each figure is reference vs tagsearch, measured in this one run, alternating):

1. data preparation: read, clean, encode, split (fresh, uncached), and a cached second load;
2. epochs: for each corpus (the built-in 47,427-post synthetic corpus, and
   ``../shared/data/stackexchange-robotics.csv`` when present) and model, reference epoch and
   tagsearch epoch in turn (tagsearch's ``fit`` runs the reference epoch from its per-epoch hook),
   each timed as train + validation; then the validation Hamming loss after the same epochs; and on
   the first corpus the floor of each model (``benchmarks/floor.py``: the bytes a step must move,
   the copy bandwidth, the floor per epoch and tagsearch's ratio to it);
3. whole process: ``seed_path.py`` and ``tagsearch train … --no-early-stop`` as child processes,
   alternating, wall time and each child's peak resident memory;
4. search (only when ``tagsearch.study.workers`` exists): ``tagsearch launch`` throughput, 2 workers × 1
   thread vs 1 worker × 2 threads, and pruning on vs off (total epochs trained).

Threads. The reference runs as the notebooks ran, with torch's default thread count (one per core:
2 here); tagsearch runs with ``--threads`` (default 1, what its workers use). On 2 cores shared
with other processes torch's second thread mostly spin-waits, which makes the notebooks' setup
several times slower; so every figure is also given against the reference at tagsearch's thread
count ("same threads"), which isolates what the code changes bought. Timings on a shared machine
are noisy: alternating puts the same load on both sides, and the ratios are what to read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import floor, seed_path
from tagsearch.data import corpus as data
from tagsearch.learn import features
from tagsearch.learn import train
from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.data.synth import write_corpus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROBOTICS = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"
SPECS, seed_params = floor.SPECS, floor.seed_params
QUICK_POSTS = 6000
DEFAULT_THREADS = torch.get_num_threads()  # torch's default, before anything here changes it
QUALITY_TOLERANCE = 0.005
TARGETS = {"dense_epoch_ratio": 20.0, "tfidf_epoch_ratio": 20.0, "whole_process_ratio": 8.0,
           "prep_seconds": 10.0, "worker_peak_rss_mb": 2048.0}


def say(message: str = "") -> None:
    print(message, file=sys.stderr if ARGS.json else sys.stdout, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Corpora


def corpora(args) -> list[tuple[str, str]]:
    """(name, path) of the corpora to run on: the synthetic one, and robotics when present."""
    if args.quick:
        path = Path(tempfile.gettempdir()) / f"tagsearch-bench-synth-{QUICK_POSTS}.csv"
        if not path.is_file():
            write_corpus(path, n_posts=QUICK_POSTS, seed=0)
        found = [(f"synthetic {QUICK_POSTS}", str(path))]
    else:
        found = [(f"synthetic {BUILTIN_POSTS}", ensure_corpus(str(REPO / BUILTIN_PATH), BUILTIN_POSTS))]
    if ROBOTICS.is_file():
        found.append(("robotics", str(ROBOTICS)))
    else:
        say(f"skipped: {ROBOTICS} is absent (the ../shared folder is not beside this checkout)")
    return found


def set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# 1. Data preparation


def ours_prepare(path: str, kind: str) -> float:
    """Read + clean + split + encode the training and validation inputs, bypassing every cache."""
    start = time.perf_counter()
    config = data.DataConfig(path=path)
    corpus = data.build_corpus(data.read_table(path), config)
    params = seed_params(kind)
    cache = features.FeatureCache()
    featurizer = features.featurizer_for(params).fit_corpus(corpus, cache)
    cache.inputs(featurizer, corpus, "train")
    cache.inputs(featurizer, corpus, "val")
    return time.perf_counter() - start


def reference_prepare(path: str, kind: str) -> float:
    start = time.perf_counter()
    texts, labels, _ = seed_path.load_posts(path)
    train_idx, val_idx, _ = seed_path.seed_split(len(texts))
    train_texts = [texts[i] for i in train_idx]
    if kind == "dense":
        seed_path.build_vocab(train_texts)
    else:
        seed_path.TfidfVectorizer(max_features=seed_path.SEED_PARAMS["max_features"]).fit_transform(train_texts)
    return time.perf_counter() - start


def bench_prepare(path: str, kind: str, repeats: int) -> dict:
    """Fresh preparation, reference and tagsearch in turn (best of ``repeats``), then what a second
    trial in the same worker pays: the per-process caches make it a lookup."""
    ref, ours = [], []
    for _ in range(repeats):
        ref.append(reference_prepare(path, kind))
        ours.append(ours_prepare(path, kind))
    params, cache = seed_params(kind), features.FeatureCache()  # a worker's cache, as the objective keeps one

    def load_and_encode() -> None:
        corpus = data.load_corpus(data.DataConfig(path=path))
        featurizer = cache.fitted(features.featurizer_for(params), corpus)
        cache.inputs(featurizer, corpus, "train")
        cache.inputs(featurizer, corpus, "val")

    load_and_encode()  # the first trial fills the caches
    start = time.perf_counter()
    load_and_encode()
    cached = time.perf_counter() - start
    return {"reference_seconds": min(ref), "ours_seconds": min(ours), "ratio": min(ref) / min(ours),
            "ours_cached_seconds": cached}


# ---------------------------------------------------------------------------------------------
# 2. Epochs, alternating


def reference_trainer(corpus: data.Corpus, kind: str, seed: int):
    labels = corpus.labels.astype(np.float32)
    train_texts = [corpus.texts[i] for i in corpus.train_idx]
    val_texts = [corpus.texts[i] for i in corpus.val_idx]
    return seed_path.TRAINERS[kind](train_texts, labels[corpus.train_idx], val_texts, labels[corpus.val_idx],
                                    seed=seed)


def bench_epochs(path: str, kind: str, epochs: int, threads: int, reference_threads: int, seeds: int) -> dict:
    """Per seed: our epoch, then (from fit's per-epoch hook) one reference's epoch at its default
    threads and a second reference's at our thread count; ``epochs`` times.

    Quality: the final validation Hamming loss, averaged over the seeds (and, for the reference,
    its two runs). Even two reference runs with the same seed differ by up to ~0.005 after 3
    epochs (their shuffles draw from torch's global generator in turn), and on a small corpus
    such as robotics single runs scatter by ±0.01, hence several seeds there."""
    corpus = data.load_corpus(data.DataConfig(path=path))
    runs = [alternate(corpus, kind, epochs, threads, reference_threads, seed) for seed in range(42, 42 + seeds)]
    ref = [r for run in runs for r in run["reference"]]
    same = [r for run in runs for r in run["same_threads"]]
    ours = [r for run in runs for r in run["ours"]]
    ref_hamming = float(np.mean([run[side][-1]["val_hamming_loss"] for run in runs
                                 for side in ("reference", "same_threads")]))
    ours_hamming = float(np.mean([run["ours"][-1]["val_hamming_loss"] for run in runs]))
    ours_epoch = steady_seconds(runs, "ours")
    return {"posts": len(corpus.texts), "epochs": epochs, "seeds": seeds, "threads": threads,
            "reference_threads": reference_threads,
            "reference_epoch_seconds": [r["seconds"] for r in ref],
            "reference_same_threads_epoch_seconds": [r["seconds"] for r in same],
            "ours_epoch_seconds": [r["seconds"] for r in ours],
            "reference_epoch": steady_seconds(runs, "reference"),
            "reference_same_threads_epoch": steady_seconds(runs, "same_threads"), "ours_epoch": ours_epoch,
            "ratio": steady_seconds(runs, "reference") / ours_epoch,
            "ratio_same_threads": steady_seconds(runs, "same_threads") / ours_epoch,
            "reference_val_hamming": [r["val_hamming_loss"] for r in ref],
            "reference_same_threads_val_hamming": [r["val_hamming_loss"] for r in same],
            "ours_val_hamming": [r["val_hamming_loss"] for r in ours],
            "reference_final_val_hamming": ref_hamming, "ours_final_val_hamming": ours_hamming,
            "quality_delta": ours_hamming - ref_hamming, "quality_ok": ours_hamming <= ref_hamming + QUALITY_TOLERANCE,
            "process_peak_rss_mb": peak_rss_mb()}


def alternate(corpus: data.Corpus, kind: str, epochs: int, threads: int, reference_threads: int, seed: int) -> dict:
    """Our ``fit``, running from its per-epoch hook one reference epoch at ``reference_threads`` and
    (when that differs from ``threads``) a second reference's epoch at ``threads``."""
    params = {**seed_params(kind), "seed": seed}
    reference = reference_trainer(corpus, kind, seed)
    same_threads = reference_trainer(corpus, kind, seed) if threads != reference_threads else None
    model, train_data, val_data, _ = train.build(corpus, params, "cpu")
    records = {"reference": [], "same_threads": []}

    def run_reference_epochs(epoch: int, record: dict) -> None:
        set_threads(reference_threads)
        records["reference"].append(reference.epoch())
        set_threads(threads)
        records["same_threads"].append(same_threads.epoch() if same_threads else records["reference"][-1])
        ref, same = records["reference"][-1], records["same_threads"][-1]
        say(f"    seed {seed} epoch {epoch}: reference {ref['seconds']:6.2f}s ({reference_threads} threads), "
            f"{same['seconds']:5.2f}s ({threads});  tagsearch {record.seconds:5.2f}s ({threads});  val Hamming "
            f"reference {ref['val_hamming_loss']:.4f}, {same['val_hamming_loss']:.4f};  "
            f"tagsearch {record.value('hamming_loss'):.4f}")

    set_threads(threads)
    result = train.fit(model, train_data, val_data, params, max_epochs=epochs, patience=None,
                       on_epoch=run_reference_epochs)
    return {**records, "ours": [r.to_json() for r in result.history]}


def steady_seconds(runs: list[dict], side: str) -> float:
    """Median epoch time over the runs, leaving out each run's first epoch (one-off costs:
    allocator, page faults, forked workers) when there are later ones."""
    seconds = [r["seconds"] for run in runs for r in (run[side][1:] if len(run[side]) > 1 else run[side])]
    return float(np.median(seconds))


# ---------------------------------------------------------------------------------------------
# 3. Whole process, as child processes


def run_child(command: list[str]) -> dict:
    """Run ``command`` (through ``peak_rss.py``); its wall time, its peak RSS, and its stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss.json"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / "peak_rss.py"), str(rss_file), "--", *command],
                              capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        peak = json.loads(rss_file.read_text())["peak_rss_mb"]
    return {"seconds": seconds, "peak_rss_mb": peak, "stdout": done.stdout}


def whole_commands(path: str, kind: str, epochs: int, threads: int) -> dict[str, list[str]]:
    reference = [sys.executable, str(HERE / "seed_path.py"), "--data", path, "--model", kind, "--epochs", str(epochs),
                 "--json"]
    return {
        "reference": reference,  # torch's default threads, as the notebooks ran
        "reference_same_threads": [*reference, "--threads", str(threads)],
        "ours": [sys.executable, "-m", "tagsearch.cli", "train", str(SPECS[kind].relative_to(REPO)), "--data", path,
                 "--param", "pos_weight=seed", "--epochs", str(epochs), "--no-early-stop", "--threads", str(threads),
                 "--json"],
    }


def bench_whole(path: str, kind: str, epochs: int, threads: int, repeats: int, reference_threads: int) -> dict:
    commands = whole_commands(path, kind, epochs, threads)
    if threads == reference_threads:  # the reference's default-threads run is already the same-threads one
        del commands["reference_same_threads"]
    runs = {side: [] for side in commands}
    for _ in range(repeats):
        for side, command in commands.items():
            runs[side].append(run_child(command))
            say(f"    {side:22s} {runs[side][-1]['seconds']:7.1f}s  peak RSS {runs[side][-1]['peak_rss_mb']:6.0f} MB")
    best = {side: min(r["seconds"] for r in side_runs) for side, side_runs in runs.items()}
    best.setdefault("reference_same_threads", best["reference"])
    last = {side: json.loads(side_runs[-1]["stdout"]) for side, side_runs in runs.items()}
    return {"epochs": epochs, "command": "tagsearch " + " ".join(commands["ours"][3:]),
            "reference_command": "python " + " ".join(commands["reference"][1:]),
            "reference_seconds": best["reference"], "reference_same_threads_seconds": best["reference_same_threads"],
            "ours_seconds": best["ours"], "ratio": best["reference"] / best["ours"],
            "ratio_same_threads": best["reference_same_threads"] / best["ours"],
            "reference_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["reference"]),
            "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ours"]),
            "reference_val_hamming": last["reference"]["val_hamming_loss"][-1],
            "ours_val_hamming": last["ours"]["val_hamming_loss"][-1]}


# ---------------------------------------------------------------------------------------------
# 4. Search (the search layer's section: filled in only when tagsearch.study.workers exists)


def bench_search(args) -> dict | None:
    if importlib.util.find_spec("tagsearch.study.workers") is None:
        say("skipped: tagsearch.study.workers does not exist yet")
        return None
    from benchmarks import search_bench  # launch throughput and pruning

    return search_bench.run(args, say)


# ---------------------------------------------------------------------------------------------
# Report


def check_targets(report: dict) -> list[dict]:
    rows = []

    def add(name: str, measured: float | None, goal: float, higher_is_better: bool, unit: str = "") -> None:
        met = measured >= goal if higher_is_better else measured <= goal
        rows.append({"target": name, "measured": measured, "goal": f"{'≥' if higher_is_better else '≤'} {goal:g}{unit}",
                     "met": met})

    if not report["corpora"]:
        return rows
    synth = report["corpora"][0]
    for kind, e in synth["epochs"].items():
        add(f"{kind} epoch speed-up vs the notebooks' setup", e["ratio"], TARGETS[f"{kind}_epoch_ratio"], True, "×")
        add(f"{kind} epoch speed-up, same threads", e["ratio_same_threads"], TARGETS[f"{kind}_epoch_ratio"], True, "×")
    for corpus in report["corpora"]:
        for kind, e in corpus["epochs"].items():
            add(f"{kind} val Hamming − reference ({corpus['name']})", e["quality_delta"], QUALITY_TOLERANCE, False)
    if synth.get("prepare"):
        add("data preparation seconds", synth["prepare"]["ours_seconds"], TARGETS["prep_seconds"], False, " s")
    whole = synth["whole"].get("dense")
    if whole:
        add("whole-process speed-up vs the notebooks' setup (dense)", whole["ratio"], TARGETS["whole_process_ratio"],
            True, "×")
        add("whole-process speed-up, same threads (dense)", whole["ratio_same_threads"],
            TARGETS["whole_process_ratio"], True, "×")
        add("worker peak RSS MB (dense)", whole["ours_peak_rss_mb"], TARGETS["worker_peak_rss_mb"], False, " MB")
    return rows


def print_summary(report: dict) -> None:
    say(f"\n== summary ({report['machine']};\n   tagsearch {report['threads']} thread(s); reference "
        f"{report['reference_threads']} (torch default) and {report['threads']} (\"same threads\"))")
    for corpus in report["corpora"]:
        say(f"-- {corpus['name']}")
        if corpus.get("prepare"):
            p = corpus["prepare"]
            say(f"   data preparation: reference {p['reference_seconds']:.2f}s  tagsearch {p['ours_seconds']:.2f}s  "
                f"({p['ratio']:.1f}×); a second trial's (cached) load {p['ours_cached_seconds']:.3f}s")
        for kind, e in corpus["epochs"].items():
            say(f"   {kind:5s} epoch: reference {e['reference_epoch']:.2f}s, same threads "
                f"{e['reference_same_threads_epoch']:.2f}s;  tagsearch {e['ours_epoch']:.3f}s;  "
                f"ratio {e['ratio']:.1f}×, same threads {e['ratio_same_threads']:.1f}×")
            say(f"         val Hamming after {e['epochs']} epochs (mean of {e['seeds']} seed(s)): reference "
                f"{e['reference_final_val_hamming']:.4f}, tagsearch {e['ours_final_val_hamming']:.4f} "
                f"({'ok' if e['quality_ok'] else 'WORSE'})")
        for kind, row in corpus.get("floor", {}).items():
            say(f"   floor {floor.describe(row, corpus['bandwidth'])}")
        for kind, w in corpus["whole"].items():
            say(f"   {kind:5s} whole process ({w['epochs']} epochs): reference {w['reference_seconds']:.1f}s, "
                f"same threads {w['reference_same_threads_seconds']:.1f}s;  tagsearch {w['ours_seconds']:.1f}s;  "
                f"ratio {w['ratio']:.1f}×, same threads {w['ratio_same_threads']:.1f}×")
            say(f"         peak RSS reference {w['reference_peak_rss_mb']:.0f} MB, tagsearch "
                f"{w['ours_peak_rss_mb']:.0f} MB;  final val Hamming reference {w['reference_val_hamming']:.4f}, "
                f"tagsearch {w['ours_val_hamming']:.4f}")
    if report.get("search"):
        say("-- search")
        for label, t in report["search"]["throughput"].items():
            say(f"   {label}: {t['trials_per_minute']:.2f} finished trials/min "
                f"({t['finished']} in {t['seconds']:.0f}s)")
        for label, t in report["search"]["pruning"].items():
            say(f"   {label}: {t['finished']} trials ({t['pruned']} pruned) trained {t['epochs']} epochs in "
                f"{t['seconds']:.0f}s; best val Hamming {t['best']}")
    say("\n== targets")
    for row in report["targets"]:
        say(f"   {'met    ' if row['met'] else 'NOT MET'}  {row['target']}: {row['measured']:.3f} (goal {row['goal']})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per side (default 3; --quick: 2)")
    parser.add_argument("--whole-epochs", type=int, default=5, help="epochs of the whole-process runs (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a {QUICK_POSTS}-post corpus, 2 epochs (robotics: 4), no search")
    parser.add_argument("--only", choices=["dense", "tfidf"], help="one model only")
    parser.add_argument("--threads", type=int, default=1, help="tagsearch's torch threads (default 1)")
    parser.add_argument("--reference-threads", type=int, default=DEFAULT_THREADS,
                        help=f"the reference's torch threads (default: torch's default here, {DEFAULT_THREADS})")
    parser.add_argument("--small-seeds", type=int, default=3,
                        help="seeds per side on the small robotics corpus, whose single runs are noisy (default 3)")
    parser.add_argument("--small-epochs", type=int, default=8,
                        help="epochs on robotics (default 8, the specs' max_epochs: after 2-3 epochs of its ~8 "
                             "steps both sides still sit near predicting no tag)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side of the data/whole-process figures")
    parser.add_argument("--skip-whole", action="store_true", help="no whole-process runs")
    parser.add_argument("--search", action="store_true", help="also run the search section (long)")
    parser.add_argument("--search-only", action="store_true", help="only the search section")
    parser.add_argument("--search-window", type=float, default=240.0, help="seconds per throughput run (default 240)")
    parser.add_argument("--search-trials", type=int, default=30, help="trials of the pruning studies (default 30)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout (progress on stderr)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 3)
    if args.quick:
        args.whole_epochs, args.small_epochs = min(args.whole_epochs, 2), min(args.small_epochs, 4)
    return args


def main(argv=None) -> int:
    global ARGS
    ARGS = args = parse_args(argv)
    set_threads(args.threads)
    kinds = [args.only] if args.only else ["dense", "tfidf"]
    command = " ".join(["python", "-m", "benchmarks", "run", "run", *(sys.argv[1:] if argv is None else argv)])
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command, "threads": args.threads,
              "reference_threads": args.reference_threads, "corpora": []}
    for index, (name, path) in enumerate([] if args.search_only else corpora(args)):
        say(f"\n== {name} ({path})")
        entry = {"name": name, "path": path, "epochs": {}, "whole": {}}
        if index == 0:
            say("  data preparation (read, clean, encode, split; reference, tagsearch)")
            entry["prepare"] = bench_prepare(path, kinds[0], max(2, args.repeats))
        for kind in kinds:
            epochs, seeds = (args.epochs, 1) if index == 0 else (args.small_epochs, args.small_seeds)
            say(f"  {kind}: {epochs} epochs × {seeds} seed(s), alternating")
            entry["epochs"][kind] = bench_epochs(path, kind, epochs, args.threads, args.reference_threads, seeds)
        if index == 0:
            bandwidth = floor.copy_bandwidth()
            corpus = data.load_corpus(data.DataConfig(path=path))
            say(f"  the floor (bytes a step must move / {bandwidth / 1e9:.1f} GB/s, benchmarks/floor.py)")
            entry["floor"] = {kind: floor.floor(corpus, kind, seed_params(kind), bandwidth) for kind in kinds}
            entry["bandwidth"] = bandwidth
        if index == 0 and not args.skip_whole:
            for kind in kinds:
                say(f"  {kind}: whole process, {args.whole_epochs} epochs")
                entry["whole"][kind] = bench_whole(path, kind, args.whole_epochs, args.threads, args.repeats,
                                                 args.reference_threads)
        report["corpora"].append(entry)
    if (args.search or args.search_only) and not args.quick:
        say("\n== search")
        report["search"] = bench_search(args)
    report["targets"] = check_targets(report)
    print_summary(report)
    if args.json:
        print(json.dumps(report))
    return 0


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, no GPU used; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
