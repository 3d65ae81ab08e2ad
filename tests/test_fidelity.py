"""Multi-fidelity in the amount of data: early epochs on a subsample of the training posts, and a
pruner that compares a trial only with trials of the same fidelity."""

import optuna
import pytest

from tagsearch.learn import train
from tagsearch.study import search

optuna.logging.set_verbosity(optuna.logging.WARNING)


def finished(study: optuna.Study, value: float, fidelity: str | None) -> None:
    trial = study.ask()
    if fidelity:
        trial.set_user_attr("fidelity", fidelity)
    trial.report(value, 1)
    trial.should_prune()  # successive halving records the trial's rung when asked
    study.tell(trial, value)


def should_prune(study: optuna.Study, value: float, fidelity: str | None) -> bool:
    trial = study.ask()
    if fidelity:
        trial.set_user_attr("fidelity", fidelity)
    trial.report(value, 1)
    return trial.should_prune()


@pytest.mark.parametrize("base", [lambda: optuna.pruners.MedianPruner(n_startup_trials=1),
                                  lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)])
def test_trials_are_compared_only_with_trials_of_the_same_fidelity(base):
    """Full-data trials reached a loss of 0.10 at epoch 1; subsampled ones 0.30 (less data, worse
    loss). A subsampled trial at 0.25 is the best of its kind and goes on, though every full trial
    beat it; a full trial at 0.25 is the worst of its kind and is pruned. Unfiltered, the median
    pruner would prune the first."""
    study = optuna.create_study(direction="minimize", pruner=search.FidelityPruner(base()))
    for fidelity in [None, "0.25x2", None, "0.25x2", None, "0.25x2", None, None, None]:
        finished(study, 0.10 if fidelity is None else 0.30, fidelity)
    assert not should_prune(study, 0.25, "0.25x2")
    assert should_prune(study, 0.25, None)
    if isinstance(study.pruner.base, optuna.pruners.MedianPruner):
        mixed = optuna.create_study(direction="minimize", pruner=base())
        for trial in study.trials:
            mixed.add_trial(trial)
        assert should_prune(mixed, 0.25, "0.25x2")  # what the filter prevents


def test_early_epochs_train_on_a_fixed_subsample_then_on_all_posts(monkeypatch, tiny_corpus_and_params):
    corpus, params = tiny_corpus_and_params
    sizes, train_epoch = [], train.train_epoch

    def counting(model, data, *args, **kwargs):
        sizes.append(len(data))
        return train_epoch(model, data, *args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", counting)
    built = train.build(corpus, params)
    result = train.fit_folds([built], params, max_epochs=4, patience=None,
                             fidelity=lambda epoch: 0.25 if epoch < 3 else 1.0)
    n = len(corpus.train_idx)
    assert sizes == [round(n * 0.25)] * 2 + [n] * 2 and result.epochs_run == 4


@pytest.fixture
def tiny_corpus_and_params(spec_factory):
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.spec import load_spec

    spec = load_spec(spec_factory("tfidf"))
    return load_corpus(spec.data_config()), spec.params({})
