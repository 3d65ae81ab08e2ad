"""The Python API: what the command line does, as functions for notebooks (exported lazily by
``tagsearch/__init__.py``; see the README's "Python API"). Each one wraps the function the
matching command calls, so a notebook and the command line train, search and predict alike."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from . import data as corpora
from .spec import Spec, coerce, load_spec


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def load_corpus(spec: Spec | str | Path | corpora.DataConfig, data: str | None = None, *,
                text_columns: list[str] | None = None, tags_column: str | None = None,
                top_k: int | None = None) -> corpora.Corpus:
    """The posts of a spec's ``[data]`` section (or of the file ``data``): read, cleaned,
    split and fingerprinted like ``tagsearch train`` does; the built-in corpus is generated on first use."""
    if isinstance(spec, corpora.DataConfig):
        return corpora.load_corpus(spec)
    options = Namespace(data=data, text_columns=text_columns, tags_column=tags_column, top_k=top_k)
    return corpora.load_corpus(corpora.resolve_data(_spec(spec), options))


def train_one(spec: Spec | str | Path, corpus: corpora.Corpus | None = None, *, epochs: int | None = None,
              early_stop: bool = True, device: str | None = None, on_epoch=None, **params):
    """Train one configuration (``tagsearch train``): the spec's ``[defaults]``, overridden by
    ``params`` (checked like ``--param``). Returns ``train.TrainResult``: ``.model`` carries the best
    epoch's weights, ``.history`` one record per epoch. ``on_epoch(epoch, record)`` runs after each."""
    from .train import train_config

    spec = _spec(spec)
    corpus = corpus or load_corpus(spec)
    overrides = {name: coerce(name, value, "train_one") for name, value in params.items()}
    result, _ = train_config(corpus, spec.params(overrides), max_epochs=epochs or spec.max_epochs,
                             patience=spec.patience if early_stop else None, device=device or spec.device,
                             on_epoch=on_epoch)
    return result


def run_study(spec: Spec | str | Path, corpus: corpora.Corpus | None = None, *, n_trials: int | None = None,
              storage: str | None = None, study_name: str | None = None, timeout: float | None = None,
              device: str | None = None):
    """Create the spec's study, or join it if it exists (same storage and name, same data), and run
    trials in this process, as one ``tagsearch worker`` does, until the study as a whole has
    ``n_trials`` finished trials (default: the spec's). Returns the ``optuna.Study``."""
    from . import search, workers

    spec = _spec(spec)
    corpus = corpus or load_corpus(spec)
    url = storage or spec.storage
    study = search.open_study(spec, corpus, url, study_name)
    workers.run_trials(study, search.Objective(spec, corpus, device=device), n_trials or spec.n_trials,
                       timeout or spec.timeout, wait_for_running=workers.has_heartbeat(url), url=url)
    return study


def retrain_trial(spec: Spec | str | Path, trial: int | None = None, *, out: str | Path | None = None,
                  data: str | None = None, storage: str | None = None, study_name: str | None = None,
                  device: str | None = None, threads: int | None = None) -> Path:
    """``tagsearch retrain``: retrain the study's best trial (or trial number ``trial``), evaluate it
    once on the test split and write a results directory (default ``results/<study>``); returns it."""
    import torch

    from .retrain import cmd_retrain

    spec = _spec(spec)
    out = Path(out or Path("results") / (study_name or spec.name))
    saved_threads = torch.get_num_threads()  # retrain sets its own; give the notebook its own back
    try:
        cmd_retrain(Namespace(spec=spec.path, data=data, text_columns=None, tags_column=None, top_k=None,
                              storage=storage, study_name=study_name, out=str(out), trial=trial, device=device,
                              threads=threads))
    finally:
        torch.set_num_threads(saved_threads)
    return out


def load_results(folder: str | Path):
    """A results directory written by ``retrain`` (JSON and safetensors only, checksums verified)."""
    from .results import load

    return load(folder)


def tag_posts(results, texts: list[str]) -> list[dict]:
    """``tagsearch predict --json`` for a list of raw posts: ``{"tags": [...], "scores": {tag: p}}``
    per post. ``results``: a results directory or what ``load_results`` returned."""
    from .predict import tag_posts as tag

    return tag(load_results(results) if isinstance(results, (str, Path)) else results, texts)
