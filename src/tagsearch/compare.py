"""``tagsearch compare [DIR ...]``: results directories side by side, plus a linear baseline.

For each results directory (default: every ``results/*/`` holding a config.json): model, test
Hamming loss, micro/macro F1, parameter count, retrain seconds and the best parameters. For each
distinct data set among them, a TF-IDF + one-vs-rest LogisticRegression baseline (scikit-learn,
untuned) is fitted on the same training split and evaluated the same way: global 0.5 or per-tag
thresholds fitted on validation, whichever has the higher validation micro-F1. The Markdown table
goes to stdout and to ``--out`` (default results/compare.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


from . import features, results
from .data import DataConfig, load_corpus
from .errors import UserError
from .log import log
from .spec import PARAMS

RESULTS_ROOT = Path("results")
BASELINE = {"max_features": 20000, "ngram_max": 1, "sublinear_tf": True, "C": 1.0}
BASELINE_NAME = "baseline: TF-IDF + LogisticRegression"
HIDDEN_PARAMS = ("model", "seed", "clip_value")
HEADERS = ["results", "model", "data", "thresholds", "test Hamming", "test micro-F1", "test macro-F1",
           "parameters", "train s", "params"]


def cmd_compare(args) -> int:
    folders = [Path(f) for f in args.results] or default_folders()
    entries = [load_entry(folder) for folder in folders]
    rows, notes = [], []
    for fingerprint in dict.fromkeys(e["config"]["fingerprint"] for e in entries):
        group = [e for e in entries if e["config"]["fingerprint"] == fingerprint]
        rows += [result_row(e) for e in group]
        line = baseline_row(group[0]["config"], notes)
        rows += [line] if line else []
    text = render(rows, notes)
    print(text, end="")
    write_text(Path(args.out), text)
    log(f"wrote {args.out}")
    return 0


def default_folders() -> list[Path]:
    folders = sorted(p for p in RESULTS_ROOT.glob("*") if p.is_dir() and not p.name.startswith(".")
                     and (p / results.CONFIG).is_file())
    if not folders:
        raise UserError(f"no results directories under {RESULTS_ROOT}/; expected some written by "
                        f"'tagsearch retrain' (or run 'tagsearch demo'), or name them: tagsearch compare DIR ...")
    return folders


def load_entry(folder: Path) -> dict:
    config = results.read_config(folder)
    metrics = results.read_json(folder / results.METRICS, "metrics file")
    for key in ("test_hamming_loss", "test_micro_f1", "test_macro_f1"):
        if key not in metrics:
            raise UserError(f"metrics file {str(folder / results.METRICS)!r} lacks {key!r}; re-run 'tagsearch retrain'")
    return {"folder": folder, "config": config, "metrics": metrics}


# ---------------------------------------------------------------------------------------------
# Rows


def format_params(params: dict) -> str:
    """The parameters that apply to the model, compactly (floats to 3 significant digits)."""
    shown = [(k, v) for k, v in params.items() if k not in HIDDEN_PARAMS and k in PARAMS
             and params["model"] in PARAMS[k].models]
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


def data_label(config: dict) -> str:
    return f"{Path(config['data']['path']).name} [{config['fingerprint'][:8]}]"


def result_row(entry: dict) -> list:
    config, metrics = entry["config"], entry["metrics"]
    return [entry["folder"].name, config["model"], data_label(config), config["threshold_choice"].replace("_", "-"),
            f"{metrics['test_hamming_loss']:.4f}", f"{metrics['test_micro_f1']:.4f}",
            f"{metrics['test_macro_f1']:.4f}", f"{config['parameters']:,}", f"{config['train_seconds']:.1f}",
            format_params(config["params"])]


def baseline_row(config: dict, notes: list[str]) -> list | None:
    """The baseline on the data ``config`` was trained on, or None (with a note) if that data is gone."""
    data = config["data"]
    try:
        corpus = load_corpus(DataConfig(**{**data, "text_columns": tuple(data["text_columns"])}))
    except UserError as exc:
        notes.append(f"no baseline for {data_label(config)}: {exc}")
        return None
    if corpus.fingerprint != config["fingerprint"]:
        notes.append(f"no baseline for {data_label(config)}: {data['path']} now has fingerprint "
                     f"{corpus.fingerprint} (the file changed since the retrain)")
        return None
    log(f"fitting the baseline on {corpus.source} ({len(corpus.train_idx)} training posts) ...")
    figures = fit_baseline(corpus)
    return [BASELINE_NAME, "linear", data_label(config), figures["chosen"].replace("_", "-"),
            f"{figures['hamming_loss']:.4f}", f"{figures['micro_f1']:.4f}", f"{figures['macro_f1']:.4f}",
            f"{figures['parameters']:,}", f"{figures['seconds']:.1f}",
            ", ".join(f"{k}={v}" for k, v in BASELINE.items())]


def fit_baseline(corpus) -> dict:
    """TF-IDF (fitted on train) + one-vs-rest LogisticRegression; test figures at the chosen thresholds."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from .retrain import threshold_variants

    start = time.perf_counter()
    vectorizer = features.make_vectorizer(BASELINE["max_features"], BASELINE["ngram_max"], BASELINE["sublinear_tf"])
    vectorizer.fit([corpus.texts[i] for i in corpus.train_idx])
    matrix = vectorizer.transform(corpus.texts).tocsr()
    classifier = OneVsRestClassifier(LogisticRegression(C=BASELINE["C"], solver="liblinear"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a tag absent from a tiny training split
        classifier.fit(matrix[corpus.train_idx], corpus.labels[corpus.train_idx])
    seconds = time.perf_counter() - start
    y_val, p_val = corpus.labels[corpus.val_idx], classifier.predict_proba(matrix[corpus.val_idx])
    y_test, p_test = corpus.labels[corpus.test_idx], classifier.predict_proba(matrix[corpus.test_idx])
    variants, chosen = threshold_variants(y_val, p_val, y_test, p_test, corpus.tag_names, 0.5)
    test = variants[chosen]["test"]
    n_parameters = matrix.shape[1] * len(corpus.tag_names) + len(corpus.tag_names)
    return {"chosen": chosen, "hamming_loss": test["hamming_loss"], "micro_f1": test["micro_f1"],
            "macro_f1": test["macro_f1"], "parameters": n_parameters, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Output


def render(rows: list[list], notes: list[str]) -> str:
    best = max(rows, key=lambda r: float(r[5]))
    lines = [
        "# Dense or sparse? Test-split comparison", "",
        results.markdown_table(HEADERS, rows), "",
        f"Best test micro-F1: **{best[5]}** ({best[0]}).", "",
        "- thresholds: global (the trial's) or per-tag (fitted on validation), whichever had the higher "
        "validation micro-F1; the baseline is chosen the same way.",
        "- baseline: TfidfVectorizer (unigrams, sublinear tf, at most 20,000 terms, fitted on the training "
        "split) + one-vs-rest LogisticRegression (C=1, liblinear), untuned.",
        "- train s: retrain wall time (networks) or vectorizer + fit time (baseline), on this machine.",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
