"""Can the test split tell a results folder's model from the tuned baselines? A paired bootstrap.

Both predict the same test posts; resampling the posts (with replacement) gives the spread of the
difference in test Hamming loss and micro-F1 that the split's size alone allows. The baselines are
fitted exactly as ``tagsearch compare`` fits them (``compare.fit_baseline``: same folds, C and
weight chosen on validation, the study's metric), from the study's stored encodings:

    .venv/bin/python -m benchmarks run paired results/tagger-stackexchange-robotics [--resamples 5000] [--json]

Reports, per baseline: the model's and the baseline's test figures, the mean difference (model −
baseline), its 95 % interval, and the share of resamples where the model is better.

``--against OTHER`` compares the folder with another results folder of the same data instead (any
kind ``predict`` loads: a network, a baseline, an ensemble; e.g. today's pick against an older one,
or the delivered model against a candidate under ``results/<study>.candidates/``), both predicting
the same test posts at their own saved thresholds:

    .venv/bin/python -m benchmarks run paired results/tagger-x --against results/tagger-x.candidates/tfidf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def figures(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(Hamming loss, micro-F1) of 0/1 matrices."""
    tp = int((y_true & y_pred).sum())
    wrong = int((y_true != y_pred).sum())
    return wrong / y_true.size, 2 * tp / (2 * tp + wrong) if tp or wrong else 1.0


def paired(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, resamples: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        a, b = figures(y[rows], ours[rows]), figures(y[rows], theirs[rows])
        diffs.append((a[0] - b[0], a[1] - b[1]))
    diffs = np.array(diffs)
    out = {}
    for column, name, better in ((0, "hamming_loss", -1), (1, "micro_f1", 1)):
        d = diffs[:, column]
        low, high = np.percentile(d, [2.5, 97.5])
        out[name] = {"model": figures(y, ours)[column], "baseline": figures(y, theirs)[column],
                     "difference": float(d.mean()), "interval_95": [float(low), float(high)],
                     "model_better_share": float((better * d > 0).mean())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a results folder (tagsearch retrain / tune)")
    parser.add_argument("--against", metavar="OTHER", help="another results folder of the same data (instead of "
                                                           "the baselines)")
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from tagsearch.data.corpus import DataConfig, load_corpus  # the models: torch, loaded only to compare them
    from tagsearch.results import compare, folder as results
    from tagsearch.results.predict import load
    from tagsearch.study.search import embedding_dir

    loaded = load(args.folder)
    config, metric = loaded.config, loaded.config["metric"]
    data = config["data"]
    corpus = load_corpus(DataConfig(**{**data, "text_columns": tuple(data["text_columns"])}))
    y = corpus.labels[corpus.test_idx].astype(np.uint8)
    texts = [corpus.texts[i] for i in corpus.test_idx]
    ours, _ = loaded.predict(texts, cleaned=True)
    folds = json.loads((Path(args.folder) / results.METRICS).read_text())["folds"]
    report = {}
    if args.against:
        other = load(args.against)
        if other.config.get("fingerprint") != config.get("fingerprint") or other.tag_names != loaded.tag_names:
            parser.error(f"{args.against} was fitted on other data or tags than {args.folder}")
        report[str(args.against)] = paired(y, ours, other.predict(texts, cleaned=True)[0], args.resamples)
    for kind, name in compare.BASELINES.items() if not args.against else ():
        base = compare.fit_baseline(corpus, metric, config.get("refit", False), folds, kind,
                                    config["params"].get("encoder", compare.DEFAULT_ENCODER),
                                    embedding_dir(config.get("storage", "")))
        report[name] = paired(y, ours, base.predictions, args.resamples)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, rows in report.items():
            for figure, row in rows.items():
                low, high = row["interval_95"]
                print(f"{name}: {figure}: model {row['model']:.4f}, other {row['baseline']:.4f}, difference "
                      f"{row['difference']:+.4f} [{low:+.4f}, {high:+.4f}], model better in "
                      f"{row['model_better_share']:.0%} of {args.resamples} resamples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
