"""``tagsearch compare [DIR ...]``: results directories side by side with a tuned linear baseline,
and the winner named on validation.

For each results directory (default: every ``results/*/`` holding a config.json): model, the study's
metric on validation (cross-fitted, as the search and ``retrain`` measure it), test Hamming loss
beside the Hamming loss of predicting no tag (the scale it is read on), micro/macro F1, P@1 and R@1
(one tag per post: ``metrics.at_one``), parameter count, retrain seconds and the parameters. For
each distinct data set, a TF-IDF (1-2 grams, sublinear tf, min_df 2) + one-vs-rest
LogisticRegression baseline whose C is picked on validation for the same metric, with the same
threshold rule, refit on training + validation when the networks were. The winner is the row with the best *validation* value; test
figures are reported, never used to choose. The Markdown table goes to stdout and to ``--out``
(default results/compare.md).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagsearch.learn import metrics
from tagsearch.learn.features import EncoderTfidf, FeatureCache, Featurizer, TfidfFeatures
from tagsearch.results import folder as results
from tagsearch.data.corpus import DataConfig, cv_folds, load_corpus, train_and_val
from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.study.search import embedding_dir, is_active
from tagsearch.study.spec import DEFAULT_ENCODER, PARAMS

RESULTS_ROOT = Path("results")
BASELINE_TFIDF = {"max_features": 0, "min_df": 2, "ngram_max": 2, "sublinear_tf": True}
BASELINE_C = (1.0, 4.0, 16.0)
BASELINE_NAME = "baseline: TF-IDF + LogisticRegression"
ENCODER_BASELINE_NAME = "baseline: TF-IDF ⊕ encoder + LogisticRegression"
BASELINE_WEIGHTS = (0.5, 1.0)  # the encoder block's weight beside the unit TF-IDF row, chosen on validation
BASELINES = {"tfidf": BASELINE_NAME, "encoder_tfidf": ENCODER_BASELINE_NAME}
HIDDEN_PARAMS = ("model", "seed", "clip_value")
REFERENCE = ("hamming_loss_no_tags", "precision_at_1", "recall_at_1")  # metrics.reference_figures, in Row's order
HEADERS = ["results", "model", "data", "metric", "validation", "thresholds", "test Hamming", "no-tag Hamming",
           "test micro-F1", "test macro-F1", "test P@1", "test R@1", "parameters", "train s", "params"]


def compare(folders: list[str | Path] | None = None, *, out: str | Path = "results/compare.md",
            encoder_baseline: bool = True) -> Path:
    """``tagsearch compare``: the results directories ``folders`` (default: every ``results/*/``
    with a config.json) and the tuned baselines per data set (TF-IDF + logistic regression, and
    with ``encoder_baseline`` TF-IDF ⊕ a sentence encoder's embedding + logistic regression, where
    the encoder can be loaded), as a Markdown table written to ``out``; returns ``out``."""
    table = compare_table([Path(f) for f in folders or ()] or default_folders(), encoder_baseline)
    write_text(Path(out), render(table.groups, table.notes))
    log(f"wrote {out}")
    return Path(out)


@dataclass
class Table:
    """What ``compare`` writes, as numbers: per (data set, metric) group its metric and rows (the
    results directories', then the baselines'), and the notes on rows that could not be made."""

    groups: list[tuple[str, list["Row"]]]
    notes: list[str]


def compare_table(folders: list[Path], encoder_baseline: bool = True, baselines: bool = True) -> Table:
    """The rows of ``folders`` and, per group, the baselines fitted on the same data and folds
    (``baselines=False``: none fitted, e.g. when ``folders`` hold them already, as ``tune``'s candidates do)."""
    entries = [load_entry(folder) for folder in folders]
    groups, notes = [], []
    for key in dict.fromkeys((e["config"]["fingerprint"], e["metrics"]["metric"]) for e in entries):
        group = [e for e in entries if (e["config"]["fingerprint"], e["metrics"]["metric"]) == key]
        rows = [result_row(e) for e in group]
        refit = any(e["config"].get("refit") for e in group)
        kinds = (("tfidf", "encoder_tfidf") if encoder_baseline else ("tfidf",)) if baselines else ()
        encoder = next((e["config"]["params"]["encoder"] for e in group if e["config"]["model"].startswith("encoder")),
                       DEFAULT_ENCODER)
        for kind in kinds:
            line = baseline_row(group[0]["config"], key[1], refit, group[0]["metrics"].get("folds", 1), notes,
                                kind, encoder)
            rows += [line] if line else []
        groups.append((key[1], rows))
    return Table(groups, notes)


def default_folders() -> list[Path]:
    folders = sorted(p for p in RESULTS_ROOT.glob("*") if p.is_dir() and not p.name.startswith(".")
                     and (p / results.CONFIG).is_file())
    if not folders:
        raise UserError(f"no results directories under {RESULTS_ROOT}/; expected some written by "
                        f"'tagsearch retrain' (or run 'tagsearch demo'), or name them: tagsearch compare DIR ...")
    return folders


def load_entry(folder: Path) -> dict:
    with results.FolderReader(folder) as reader:  # both checked against the folder's manifest
        config = reader.config()
        figures = reader.json(results.METRICS, "metrics file")
    for key in ("metric", "validation_value", "test_hamming_loss", "test_micro_f1", "test_macro_f1"):
        if key not in figures:
            raise UserError(f"metrics file {str(folder / results.METRICS)!r} lacks {key!r} (written by an older "
                            f"tagsearch); re-run 'tagsearch retrain'")
    return {"folder": folder, "config": config, "metrics": figures}


# ---------------------------------------------------------------------------------------------
# Rows


def format_params(params: dict) -> str:
    """The parameters that change the model, compactly (floats to 3 significant digits)."""
    params = {"hidden_layers": 2, **params}  # results written before hidden_layers had two blocks
    shown = [(k, v) for k, v in params.items() if k not in HIDDEN_PARAMS and k in PARAMS
             and params["model"] in PARAMS[k].models and is_active(k, params)]
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


def data_label(config: dict) -> str:
    return f"{Path(config['data']['path']).name} [{config['fingerprint'][:8]}]"


def figure(value: float | None) -> str:
    """A figure in the table; ``—`` for one a results directory predates."""
    return "—" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class Row:
    """One line of the table, as numbers; ``cells`` formats it."""

    name: str
    model: str
    data: str
    metric: str
    validation: float  # the study's metric on validation, cross-fitted: what picks the winner
    thresholds: str
    test_hamming_loss: float
    test_micro_f1: float
    test_macro_f1: float
    test_hamming_loss_no_tags: float | None  # None: results written before tagsearch recorded it
    test_precision_at_1: float | None
    test_recall_at_1: float | None
    parameters: int
    seconds: float
    params: str

    def cells(self) -> list[str]:
        return [self.name, self.model, self.data, self.metric, f"{self.validation:.4f}",
                self.thresholds.replace("_", "-"), figure(self.test_hamming_loss),
                figure(self.test_hamming_loss_no_tags), figure(self.test_micro_f1), figure(self.test_macro_f1),
                figure(self.test_precision_at_1), figure(self.test_recall_at_1), f"{self.parameters:,}",
                f"{self.seconds:.1f}", self.params]


def result_row(entry: dict) -> Row:
    config, figures = entry["config"], entry["metrics"]
    return Row(entry["folder"].name, config["model"], data_label(config), figures["metric"],
               figures["validation_value"], config["threshold_choice"], figures["test_hamming_loss"],
               figures["test_micro_f1"], figures["test_macro_f1"], *(figures.get(f"test_{k}") for k in REFERENCE),
               config["parameters"], config["train_seconds"],
               (config.get("summary") or format_params(config["params"])) + (", refit" if config.get("refit") else ""))


def is_baseline(row: Row) -> bool:
    """A tuned baseline's row: fitted here, or a baseline results folder (``tune``'s candidates)."""
    return row.name in BASELINES.values() or row.model == "linear"


def baseline_row(config: dict, metric: str, refit: bool, folds: int, notes: list[str], kind: str = "tfidf",
                 encoder: str = DEFAULT_ENCODER) -> Row | None:
    """The ``kind`` baseline on the data ``config`` was trained on, or None (with a note) if that
    data is gone or the encoder cannot be loaded."""
    recorded = config["data"]
    try:
        corpus = load_corpus(recorded_data(recorded))
    except UserError as exc:
        notes.append(f"no baseline for {data_label(config)}: {exc}")
        return None
    if corpus.fingerprint != config["fingerprint"]:
        notes.append(f"no baseline for {data_label(config)}: {recorded['path']} now has fingerprint "
                     f"{corpus.fingerprint} (the file changed since the retrain)")
        return None
    log(f"fitting the {BASELINES[kind]!r} on {corpus.source} ({len(corpus.train_idx)} training posts) ...")
    try:
        base = fit_baseline(corpus, metric, refit, folds, kind, encoder, embedding_dir(config.get("storage", "")))
    except UserError as exc:  # the encoder cannot be loaded here: the table still has the other rows
        notes.append(f"no {BASELINES[kind]!r} for {data_label(config)}: {exc}")
        return None
    weight = "" if base.encoder_weight is None else f", {encoder} weight={base.encoder_weight:g}"
    return Row(BASELINES[kind], "linear", data_label(config), metric, base.validation_value, base.chosen,
               base.hamming_loss, base.micro_f1, base.macro_f1, *(base.reference[k] for k in REFERENCE),
               base.parameters, base.seconds,
               f"C={base.C:g}{weight}" + (", refit" if refit else ""))


def recorded_data(recorded: dict) -> DataConfig:
    """The data settings a results folder recorded, as a ``DataConfig`` that never unpickles: the
    path was read from the folder, not named by the user (a shared folder naming a pickle would
    run its code)."""
    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"allow_pickle"}
    settings = {k: v for k, v in recorded.items() if k in fields}
    if not isinstance(settings.get("path"), str):
        raise UserError(f"the recorded data has no path ({recorded.get('path')!r})")
    settings["text_columns"] = tuple(settings.get("text_columns", ()))
    return DataConfig(**settings, allow_pickle=False)


def logistic_regression(matrix, labels, C: float):
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    classifier = OneVsRestClassifier(LogisticRegression(C=C, solver="liblinear", dual=True))  # dual: features ≫ posts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a tag absent from a tiny training split
        return classifier.fit(matrix, labels)


@dataclass(frozen=True)
class Baseline:
    """The tuned baseline: its threshold variant and cross-fitted validation value, its C, its test
    figures (at the chosen thresholds; ``reference``: the threshold-free ones,
    ``metrics.reference_figures``), its parameters and the seconds it took."""

    chosen: str
    validation_value: float
    C: float
    hamming_loss: float
    micro_f1: float
    macro_f1: float
    reference: dict[str, float]
    parameters: int
    seconds: float
    encoder_weight: float | None = None  # the encoder baseline's chosen weight
    predictions: np.ndarray | None = None  # test posts × tags, 0/1 at the chosen thresholds (benchmarks/paired.py)
    # The fitted model, for a results folder (results/baseline_model.py): what predicts, as (one-vs-rest
    # LogisticRegression, its fitted featurizer) pairs whose probabilities are averaged (the fold models, or
    # the refit); the out-of-fold validation labels and probabilities C and the thresholds were chosen on
    # (every fold's validation posts, in cv_folds' order, as a network's), and the test probabilities.
    final: list | None = None
    val_labels: np.ndarray | None = None
    val_probs: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    thresholds: list[float] | None = None


def baseline_features(kind: str, encoder: str = DEFAULT_ENCODER) -> list[Featurizer]:
    """The featurizers a ``kind`` baseline chooses among on validation (with C)."""
    if kind == "tfidf":
        return [TfidfFeatures(**BASELINE_TFIDF)]
    return [EncoderTfidf(**BASELINE_TFIDF, encoder=encoder, encoder_weight=w) for w in BASELINE_WEIGHTS]


def fit_baseline(corpus, metric: str, refit: bool = False, folds: int | str = "auto", kind: str = "tfidf",
                 encoder: str = DEFAULT_ENCODER, embedding_dir: str | None = None) -> Baseline:
    """TF-IDF (fitted on each training split; ``kind`` "encoder_tfidf": beside the ``encoder``'s
    embedding, its weight chosen too) + one-vs-rest LogisticRegression, C and thresholds chosen on
    validation for ``metric`` exactly as for the networks — the same folds (``data.n_folds``) —
    then, with ``refit``, refit on training + validation (else the fold models' mean predicts)."""
    start = time.perf_counter()
    splits = cv_folds(corpus, folds)
    cache = FeatureCache(embedding_dir)  # the folds share the n-gram counts and the encoding
    y_val = np.concatenate([corpus.labels[s.val_idx] for s in splits])
    best = None
    for candidate in baseline_features(kind, encoder):
        fitted = [cache.fitted(candidate, split) for split in splits]
        for C in BASELINE_C:
            models, p_val = [], []
            for split, featurizer in zip(splits, fitted):
                model = logistic_regression(cache.inputs(featurizer, split, "train").matrix,
                                            corpus.labels[split.train_idx], C)
                models.append((model, featurizer))
                p_val.append(model.predict_proba(cache.inputs(featurizer, split, "val").matrix))
            value = metrics.choose_thresholds(y_val, np.concatenate(p_val), metric).value
            if best is None or metrics.better(metric, value, best[0]):
                best = (value, C, models, np.concatenate(p_val), candidate)
    _, C, final, p_val, chosen = best  # final: what predicts (mean probability), as for the networks
    if refit:
        whole = train_and_val(corpus)
        featurizer = cache.fitted(chosen, whole)
        final = [(logistic_regression(cache.inputs(featurizer, whole, "train").matrix,
                                      corpus.labels[whole.train_idx], C), featurizer)]
    seconds = time.perf_counter() - start
    p_test = np.mean([model.predict_proba(cache.inputs(featurizer, corpus, "test").matrix)
                      for model, featurizer in final], axis=0)
    y_test = corpus.labels[corpus.test_idx]
    variants, choice = metrics.threshold_variants(y_val, p_val, y_test, p_test, corpus.tag_names, metric)
    test = variants[choice.chosen].test
    n_parameters = sum((featurizer.input_size + 1) * len(corpus.tag_names) for _, featurizer in final)
    return Baseline(choice.chosen, choice.value, C, test["hamming_loss"], test["micro_f1"], test["macro_f1"],
                    metrics.reference_figures(y_test, p_test), n_parameters, seconds,
                    getattr(chosen, "encoder_weight", None),
                    (p_test >= np.asarray(variants[choice.chosen].thresholds)).astype(np.uint8),
                    final, y_val, p_val, p_test, variants[choice.chosen].thresholds)


# ---------------------------------------------------------------------------------------------
# Output


def winner(rows: list[Row], metric: str) -> Row:
    """The row with the best validation value of ``metric`` (a tie: the first listed)."""
    return metrics.first_best(rows, metric, lambda row: row.validation)


def render(groups: list[tuple[str, list[Row]]], notes: list[str]) -> str:
    lines = ["# Which tagger? Chosen on validation, reported on test", ""]
    for metric, rows in groups:
        best = winner(rows, metric)
        networks = [r for r in rows if not is_baseline(r) and r.model != "ensemble"]
        lines += [results.markdown_table(HEADERS, [r.cells() for r in rows]), "",
                  f"Winner on validation {metric}: **{best.name}** ({best.validation:.4f}; test Hamming "
                  f"{best.test_hamming_loss:.4f}, micro-F1 {best.test_micro_f1:.4f})."]
        if is_baseline(best) and networks:
            top = winner(networks, metric)
            lines.append(f"The tuned baseline beats every searched network on validation; the best network is "
                         f"{top.name} ({top.validation:.4f}).")
        lines.append("")
    lines += [
        "- validation: the study's metric on the validation split, thresholds cross-fitted on two halves of it "
        "(fitted on one half, scored on the other), predicted by models that did not train on those posts (the "
        "training split's, or a cross-validated trial's other folds'). The winner "
        "is chosen by this column alone; test figures never choose anything.",
        "- thresholds: fixed (the threshold parameter), global or per-tag (fitted on validation for the "
        "metric), whichever has the best cross-fitted validation value; the baseline is chosen the same way.",
        f"- baseline: TF-IDF ({', '.join(f'{k}={v}' for k, v in BASELINE_TFIDF.items())}; max_features 0 = no "
        f"limit) fitted on the training split + one-vs-rest LogisticRegression (liblinear), C picked from "
        f"{', '.join(f'{c:g}' for c in BASELINE_C)} on validation; refit on training + validation when the "
        "networks were.",
        "- no-tag Hamming: the test Hamming loss of predicting no tag at all (the share of positive labels), "
        "the scale a Hamming loss is read on. test P@1, R@1: one tag per post, the most probable, whatever the "
        "thresholds; P@1 = posts whose top tag is a true tag / posts, R@1 = true tags found that way / all "
        "true tags (as fastText's test reports them). —: results written before tagsearch recorded it.",
        "- train s: retrain wall time (networks) or vectorizer + fit time (baseline), on this machine.",
    ]
    if any(row.name == ENCODER_BASELINE_NAME for _, rows in groups for row in rows):
        lines.insert(-2, f"- encoder baseline: the same TF-IDF beside a frozen sentence encoder's L2-normalised "
                         f"embedding of each post (the networks' encoder, else {DEFAULT_ENCODER}) times a weight "
                         f"picked from {', '.join(f'{w:g}' for w in BASELINE_WEIGHTS)} with C on validation: what a "
                         f"practitioner writes next.")
    if any(row.model == "ensemble" for _, rows in groups for row in rows):
        lines.append("- ensemble: the weighted mean of the other rows' probabilities, the weights chosen by greedy "
                     "selection on their out-of-fold validation predictions; its validation value has the weights "
                     "cross-fitted too (chosen on the other folds), so it is not flattered by their choice.")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
