"""PNG plots of a retrained model and of its study (matplotlib, Agg backend: no display needed).

Each function writes one file and returns its name, or returns ``None`` with a reason in ``notes``
when the plot does not apply (e.g. parameter importances of a study with one complete trial).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path.name


def plot_curves(history: list, metric: str, path: Path) -> str:
    """Training/validation loss and the study's validation metric per epoch (``train.EpochRecord``s)."""
    epochs = [r.epoch for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r.train_loss for r in history], "o-", label="training")
    left.plot(epochs, [r.val_loss for r in history], "s-", label="validation")
    left.set(title="BCE loss", xlabel="epoch", ylabel="loss")
    left.legend()
    right.plot(epochs, [r.value(metric) for r in history], "s-", color="tab:orange", label="validation")
    right.set(title=metric, xlabel="epoch", ylabel=metric)
    right.legend()
    for ax in (left, right):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, tag_names: list[str], path: Path) -> str:
    """One 2×2 confusion matrix per tag (rows: true no/yes, columns: predicted no/yes)."""
    cols = min(5, len(tag_names))
    rows = math.ceil(len(tag_names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(tag_names):
            ax.axis("off")
            continue
        matrix = confusion_matrix(y_true[:, i], y_pred[:, i], labels=[0, 1])  # [[tn, fp], [fn, tp]]
        ax.imshow(matrix, cmap="Blues")
        ax.grid(False)
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black", fontsize=9)
        ax.set_title(tag_names[i], fontsize=10)
        ax.set_xticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_yticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    return _save(fig, path)


def plot_f1(variants: dict[str, list[dict]], path: Path) -> str:
    """Per-class F1 bars, one bar per threshold variant (``{"global 0.50": per_class, ...}``)."""
    labels = [row["label"] for row in next(iter(variants.values()))]
    x = np.arange(len(labels))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels) + 2), 3.8))
    for k, (name, per_class) in enumerate(variants.items()):
        ax.bar(x + (k - (len(variants) - 1) / 2) * width, [row["f1"] for row in per_class], width, label=name)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set(ylim=(0, 1), ylabel="F1 (test)", title="Per-class F1 on the test split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_history(study, path: Path, notes: list[str]) -> str | None:
    """The study's optimization history (objective per trial and best so far)."""
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        notes.append("optimization history skipped: the study has no complete trial")
        return None
    return _optuna_figure(optuna.visualization.matplotlib.plot_optimization_history, study, path)


def _optuna_figure(plot, study, path: Path, **kwargs) -> str:
    """One of optuna's matplotlib plots of ``study``, 7 × 4 in."""
    import optuna

    with matplotlib.rc_context(), warnings.catch_warnings():  # optuna switches the global style to ggplot
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        target = (study.metric_names or ["objective value"])[0]  # val_<metric>, named when the study was created
        ax = plot(study, target_name=target, **kwargs)
        ax.figure.set_size_inches(7, 4)
        return _save(ax.figure, path)


def importances_unavailable(study) -> str | None:
    """Why parameter importances cannot be computed for ``study``, or None when they can."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return f"parameter importances skipped: they need >= 2 complete trials, the study has {len(complete)}"
    names = set.intersection(*(set(t.params) for t in complete))
    if not any(len({repr(t.params[n]) for t in complete}) > 1 for n in names):
        return "parameter importances skipped: no searched parameter varies across the complete trials"
    return None


def plot_importances(study, path: Path, notes: list[str]) -> str | None:
    """fANOVA importances of the searched parameters for the objective (seeded: reproducible)."""
    import optuna

    reason = importances_unavailable(study)
    if reason:
        notes.append(reason)
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return _optuna_figure(optuna.visualization.matplotlib.plot_param_importances, study, path,
                              evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial with the same value
        plt.close("all")
        notes.append(f"parameter importances skipped: {exc}")
        return None
