"""The Python API (exported by ``tagsearch/__init__.py``; README, "Python API"): the functions the
commands call, so a notebook trains, searches, retrains, predicts and compares as the CLI does.
Each command in cli.py only parses its arguments and calls one of these."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tagsearch.data.corpus import Corpus, DataConfig, DataOptions, resolve_data
from tagsearch.data.corpus import load_corpus as read_corpus
from tagsearch.data.synth import write_corpus  # noqa: F401  (part of the API: `tagsearch data synth`)
from tagsearch.demo import run_demo  # noqa: F401  (part of the API: `tagsearch demo`)
from tagsearch.tune import tune  # noqa: F401  (part of the API: `tagsearch tune`)
from tagsearch.results.compare import compare  # noqa: F401  (part of the API: `tagsearch compare`)
from tagsearch.results.predict import load as load_results  # noqa: F401  (part of the API: any kind tune delivers)
from tagsearch.results.predict import read_posts, tag_posts  # noqa: F401  (part of the API: `tagsearch predict`)
from tagsearch.results.retrain import retrain_trial  # noqa: F401  (part of the API: `tagsearch retrain`)
from tagsearch.study.dashboard import serve as serve_dashboard  # noqa: F401  (part of the API: `tagsearch dashboard`)
from tagsearch.study.spec import Spec, coerce, load_spec
from tagsearch.learn.train import TrainResult, pick_device, train_config


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def load_corpus(spec: Spec | str | Path | DataConfig,
                options: DataOptions | str | None = None) -> Corpus:
    """The posts of a spec's ``[data]``, read, cleaned and split as the commands do (the built-in
    corpus is generated on first use), with ``options`` on top (a path alone, or ``DataOptions``:
    ``--data``, ``--text-column``, ``--tags-column``, ``--top-k``); or of a ``DataConfig``."""
    if isinstance(spec, DataConfig):
        return read_corpus(spec)
    options = options if isinstance(options, DataOptions) else DataOptions(options)
    return read_corpus(resolve_data(_spec(spec), options))


def train_one(spec: Spec | str | Path, corpus: Corpus | None = None, *, epochs: int | None = None,
              patience: int | None = None, early_stop: bool = True, device: str | None = None, on_epoch=None,
              keep_features: bool = True, **params) -> TrainResult:
    """``tagsearch train``: the spec's ``[defaults]`` overridden by ``params`` (checked like ``--param``).
    ``.model`` carries the best epoch's weights, ``.history`` one record per epoch;
    ``on_epoch(epoch, record)`` runs after each epoch (a ``train.EpochRecord``); ``keep_features=False``
    frees the encoded features once the inputs are built (``.featurizers`` then cannot give test inputs)."""
    from tagsearch.learn.features import FeatureCache
    from tagsearch.study.search import embedding_dir

    spec = _spec(spec)
    overrides = {name: coerce(name, value, "train_one") for name, value in params.items()}
    device = device or spec.device
    cache = FeatureCache(embedding_dir(spec.storage), str(pick_device(device)))  # the study's stored encodings
    return train_config(corpus or load_corpus(spec), spec.params(overrides), max_epochs=epochs or spec.max_epochs,
                        patience=(patience or spec.patience) if early_stop else None, device=device,
                        metric=spec.metric, on_epoch=on_epoch, keep_features=keep_features, cache=cache)


def run_study(spec: Spec | str | Path, corpus: Corpus | None = None, *, n_trials: int | None = None,
              storage: str | None = None, study_name: str | None = None, timeout: float | None = None,
              device: str | None = None):
    """Create the spec's study or join it (same storage, name and data) and run trials here, as one
    ``tagsearch worker`` does, until the whole study has ``n_trials`` finished ones. Returns it."""
    from tagsearch.study import objective, search
    from tagsearch.runtime import trials
    from tagsearch.runtime.locks import BudgetLock

    spec = _spec(spec)
    corpus, url = corpus or load_corpus(spec), storage or spec.storage
    study = search.open_study(spec, corpus, url, study_name)
    with contextlib.closing(BudgetLock.of(study, url)) as lock:
        trials.run_trials(study, objective.Objective(spec, corpus, device=device, storage=url),
                          n_trials or spec.n_trials, timeout or spec.timeout, lock=lock, time_budget=spec.time_budget)
    return study
