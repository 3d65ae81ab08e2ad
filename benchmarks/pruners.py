"""Compare pruner settings on the same 30-trial TF-IDF study: total epochs trained and best value.

    python -m benchmarks run pruners                                  # spec's pruner vs none, sampler seed 42
    python -m benchmarks run pruners --sampler-seed 7 \\
        'none=kind = "none"' \\
        'halving=kind = "halving"; min_resource = 1; reduction_factor = 3' \\
        'median=kind = "median"; n_startup_trials = 4; n_warmup_steps = 1'

Each VARIANT is ``label=TOML`` for the spec's ``[pruner]`` table (``;`` separates lines). Every
variant runs studies/tfidf.toml (or ``--spec``) with ``tagsearch launch --workers 2 --devices cpu``
on the built-in corpus, in its own temporary SQLite file, with the same sampler seed. Two workers
and TPE make single runs noisy: compare several sampler seeds, not one pair.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import tomllib
from pathlib import Path

from benchmarks import search_bench
from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.study.specfile import save_spec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="LABEL=TOML",
                        help='pruner settings to compare (default: the spec\'s own and \'none=kind = "none"\')')
    parser.add_argument("--spec", default=str(search_bench.SPECS["tfidf"]))
    parser.add_argument("--sampler-seed", type=int, default=42)
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--data", help="posts file (default: the built-in corpus)")
    args = parser.parse_args(argv)
    data_path = args.data or ensure_corpus(str(search_bench.REPO / BUILTIN_PATH), BUILTIN_POSTS)
    raw = tomllib.loads(Path(args.spec).read_text())
    raw["sampler"]["seed"] = args.sampler_seed
    variants = [v.split("=", 1) for v in args.variants] or [["spec", None], ["none", 'kind = "none"']]
    with tempfile.TemporaryDirectory() as tmp:
        for label, pruner in variants:
            table = raw["pruner"] if pruner is None else tomllib.loads(pruner.replace(";", "\n"))
            spec = save_spec({**raw, "pruner": table}, Path(tmp) / f"{label}.toml")
            url, name = f"sqlite:///{tmp}/{label}.db", "pruning"
            command = search_bench.tagsearch("launch", str(spec), "--workers", "2", "--devices", "cpu", "--data",
                                             data_path, "--storage", url, "--study-name", name,
                                             "--n-trials", str(args.n_trials))
            figures = search_bench.run_study(command, url, name)
            print(json.dumps({"label": label, "pruner": pruner, "sampler_seed": args.sampler_seed, **figures}),
                  flush=True)


if __name__ == "__main__":
    main()
