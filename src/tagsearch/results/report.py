"""What a retrained trial reads as: report.md (``report_markdown``, from metrics.json's record), the
tables the dashboard note shares with it, and the summary ``tagsearch retrain`` prints
(``summary_text``). Rendering only: ``retrain`` computes the records these take."""

from __future__ import annotations

from pathlib import Path

from tagsearch.learn import metrics
from tagsearch.results import folder as results


def variant_label(evaluation: "Evaluation", name: str) -> str:
    label = "per-tag" if name == "per_tag" else f"{name} {evaluation.variants[name].thresholds[0]:.2f}"
    return label + (" (chosen)" if name == evaluation.chosen else "")


def summary_table(evaluation: "Evaluation") -> str:
    """Each variant: its cross-fitted validation value (what chose it), then its test figures."""
    rows = [[variant_label(evaluation, name), f"{figures.cross_fitted_validation:.4f}",
             f"{figures.test['hamming_loss']:.4f}", f"{figures.test['micro_f1']:.4f}",
             f"{figures.test['macro_f1']:.4f}"] for name, figures in evaluation.variants.items()]
    return results.markdown_table(["thresholds", "validation (cross-fitted)", "test Hamming loss", "test micro-F1",
                                   "test macro-F1"], rows)


def per_class_table(evaluation: "Evaluation") -> str:
    rows = [[r["label"], f"{r['threshold']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
             str(r["support"])] for r in evaluation.figures.test["per_class"]]
    return results.markdown_table(["tag", "threshold", "precision", "recall", "F1", "support"], rows)


def reference_line(reference: dict[str, float]) -> str:
    """The threshold-free test figures in one sentence (report.md, the terminal)."""
    return (f"Predicting no tag at all would have test Hamming loss {reference['hamming_loss_no_tags']:.4f} "
            f"(the share of positive labels; read the Hamming losses against it). At one tag per post, the "
            f"most probable: P@1 {reference['precision_at_1']:.4f} (posts whose top tag is a true tag), R@1 "
            f"{reference['recall_at_1']:.4f} (true tags found by the top tags, of all true tags).")


def report_markdown(record: dict, evaluation: "Evaluation", info: "RunInfo", run: "Run") -> str:
    """report.md, from metrics.json's ``record``."""
    captions = {"curves.png": "Training and validation curves", "confusion.png": "Per-class confusion (test)",
                "f1.png": "Per-class F1 (test)", "optimization_history.png": "Optimization history",
                "param_importances.png": "Parameter importances"}
    images = "\n\n".join(f"![{captions[name]}]({name})" for name in record["plots"])
    notes = "".join(f"\n- {note}" for note in record["plot_notes"])
    return (f"# {info.study}: trial {info.trial} retrained\n\n"
            f"Data `{info.data['path']}`: {record['posts']['train']} train / {record['posts']['val']} validation "
            f"/ {record['posts']['test']} test posts. Retrained for {run.result.epochs_run} epoch(s) "
            f"(at most {info.max_epochs}, patience {info.patience}); weights of epoch "
            f"{run.result.best_epoch}, the best validation {info.metric}"
            f"{'; then refit on training + validation for as many epochs' if info.refit else ''}. Predictions "
            f"use the **{evaluation.chosen.replace('_', '-')}** thresholds ({metrics.HOW_FITTED}).\n\n"
            f"{summary_table(evaluation)}\n\n{reference_line(evaluation.reference)}\n\n"
            f"## Per class (test, chosen thresholds)\n\n"
            f"{per_class_table(evaluation)}\n\n## Plots\n\n{images}\n{notes}\n")


def summary_text(out: Path, evaluation: "Evaluation", info: "RunInfo", run: "Run", uploaded: int) -> str:
    """The lines ``tagsearch retrain`` prints once the results directory is written."""
    test = evaluation.figures.test
    scores = ", ".join(f"{v.replace('_', '-')} {f.cross_fitted_validation:.4f}" for v, f in evaluation.variants.items())
    return "\n".join([
        f"trial {info.trial} of {info.study!r}: {run.result.epochs_run} epoch(s) in {run.seconds:.1f}s, "
        f"weights of epoch {run.result.best_epoch}",
        f"thresholds: {evaluation.chosen.replace('_', '-')} (cross-fitted validation {info.metric}: {scores})"
        f"{'; predictions by the model refit on training + validation' if info.refit else ''}",
        f"test: Hamming loss {test['hamming_loss']:.4f}  micro-F1 {test['micro_f1']:.4f}  "
        f"macro-F1 {test['macro_f1']:.4f}  P@1 {evaluation.reference['precision_at_1']:.4f}  "
        f"R@1 {evaluation.reference['recall_at_1']:.4f}  (no tags: Hamming loss "
        f"{evaluation.reference['hamming_loss_no_tags']:.4f})",
        f"wrote {out}/ ({uploaded} artifacts uploaded to study {info.study!r}; browse them with "
        f"'tagsearch dashboard --storage {info.storage}')"])
