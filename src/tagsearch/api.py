"""The Python API (exported by ``tagsearch/__init__.py``; README, "Python API"): each function wraps
what the matching command calls, so a notebook trains, searches and predicts as the CLI does.
``cmd_train`` is ``tagsearch train``: ``train_one`` plus printing."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import torch

from tagsearch.data import corpus as data
from tagsearch.log import log
from tagsearch.results.predict import tag_posts  # noqa: F401  (part of the API)
from tagsearch.results.folder import load as load_results  # noqa: F401  (part of the API)
from tagsearch.study.spec import Spec, coerce, load_spec, parse_overrides
from tagsearch.learn.train import TrainResult, summary_record, train_config


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def load_corpus(spec: Spec | str | Path | data.DataConfig, path: str | None = None) -> data.Corpus:
    """The posts of a spec's ``[data]`` (or of the file ``path``), read, cleaned and split as the
    commands do (the built-in corpus is generated on first use); or of a ``DataConfig``."""
    if isinstance(spec, data.DataConfig):
        return data.load_corpus(spec)
    return data.load_corpus(data.resolve_data(_spec(spec), data.DataOptions(path)))


def train_one(spec: Spec | str | Path, corpus: data.Corpus | None = None, *, epochs: int | None = None,
              patience: int | None = None, early_stop: bool = True, device: str | None = None, on_epoch=None,
              keep_features: bool = True, **params) -> TrainResult:
    """Train the spec's ``[defaults]`` overridden by ``params`` (checked like ``--param``).
    ``.model`` carries the best epoch's weights, ``.history`` one record per epoch;
    ``on_epoch(epoch, record)`` runs after each epoch; ``keep_features=False`` frees the cached
    features once the inputs are built (the next call on the same corpus builds them again)."""
    spec = _spec(spec)
    overrides = {name: coerce(name, value, "train_one") for name, value in params.items()}
    return train_config(corpus or load_corpus(spec), spec.params(overrides), max_epochs=epochs or spec.max_epochs,
                        patience=(patience or spec.patience) if early_stop else None, device=device or spec.device,
                        metric=spec.metric, on_epoch=on_epoch, keep_features=keep_features)


def cmd_train(args) -> int:
    spec, overrides = load_spec(args.spec), parse_overrides(args.param)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = data.load_corpus(data.resolve_data(spec, data.DataOptions(args.data, tuple(args.text_columns or ()), args.tags_column, args.top_k)))
    log(f"data: {corpus.source}: {corpus.summary()}")

    def show(epoch, record):
        if not args.json:
            print(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  val_hamming {record['val_hamming_loss']:.4f}  "
                  f"val_micro_f1 {record['val_micro_f1']:.4f}  ({record['thresholds']} thresholds)  "
                  f"{record['seconds']:.2f}s", flush=True)

    result = train_one(spec, corpus, epochs=args.epochs, patience=args.patience, early_stop=not args.no_early_stop,
                       device=args.device, on_epoch=show, keep_features=False, **overrides)
    record = summary_record(result, corpus, spec.params(overrides))
    if args.json:
        print(json.dumps(record))
    else:
        print(f"best epoch {record['best_epoch']} by val {record['metric']}: val_hamming "
              f"{record['best_val_hamming_loss']:.4f}  "
              f"val_micro_f1 {record['val_micro_f1']:.4f}  val_macro_f1 {record['val_macro_f1']:.4f}")
    return 0


def run_study(spec: Spec | str | Path, corpus: data.Corpus | None = None, *, n_trials: int | None = None,
              storage: str | None = None, study_name: str | None = None, timeout: float | None = None,
              device: str | None = None):
    """Create the spec's study or join it (same storage, name and data) and run trials here, as one
    ``tagsearch worker`` does, until the whole study has ``n_trials`` finished ones. Returns it."""
    from tagsearch.study import search
    from tagsearch.runtime import trials as workers

    spec = _spec(spec)
    corpus, url = corpus or load_corpus(spec), storage or spec.storage
    study = search.open_study(spec, corpus, url, study_name)
    workers.run_trials(study, search.Objective(spec, corpus, device=device), n_trials or spec.n_trials,
                       timeout or spec.timeout, url=url)
    return study


def retrain_trial(spec: Spec | str | Path, trial: int | None = None, *, out: str | Path | None = None,
                  data: str | None = None, storage: str | None = None, study_name: str | None = None,
                  device: str | None = None, threads: int | None = None, refit: bool | None = None) -> Path:
    """``tagsearch retrain``: retrain the best trial (or number ``trial``), evaluate it once on the
    test split, write the results directory (default ``results/<study>``) and return it. ``refit``:
    train again on training + validation first (default: the spec's ``[training] refit``)."""
    from tagsearch.results.retrain import cmd_retrain

    spec, saved_threads = _spec(spec), torch.get_num_threads()  # retrain sets its own: give them back
    out = Path(out or Path("results") / (study_name or spec.name))
    try:
        cmd_retrain(Namespace(spec=spec.path, data=data, text_columns=None, tags_column=None, top_k=None,
                              storage=storage, study_name=study_name, out=str(out), trial=trial, device=device,
                              threads=threads, refit=refit))
    finally:
        torch.set_num_threads(saved_threads)
    return out
