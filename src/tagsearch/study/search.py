"""One study: a spec becomes a sampler, a pruner and a search space (``suggest``); and the study's
bookkeeping: trial 0 is the spec's [defaults], the data fingerprint is recorded on the study, and a
worker on other data is refused. What a trial does is ``objective.py``'s; ``runtime`` (the trial
loop, launch) decides how many trials run and where, and ``study.workers`` wires them.

Imports no torch (the objective does): ``tagsearch launch``, which only creates the study and
supervises its workers, stays a light process.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import optuna

from tagsearch.data.corpus import Corpus
from tagsearch.errors import UserError
from tagsearch.study.spec import PARAMS, SEED_DEFAULTS, Spec
from tagsearch.runtime.progress import Progress, progress  # noqa: F401  (search.progress, as before)
from tagsearch.runtime.location import Location
from tagsearch.runtime.storage import open_storage

DESCRIBE_WAIT_SECONDS = 10


@contextmanager
def experimental_features():
    """Inside it, Optuna's ExperimentalWarning is not shown (``warnings.catch_warnings``): the
    experimental features used here (TPE's ``group``, ``PatientPruner``, metric names) are this
    module's choice, nothing a user could act on. Outside it, Optuna's warnings stand."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# ---------------------------------------------------------------------------------------------
# Sampler, pruner, search space


def build_sampler(spec: Spec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (constant liar, so parallel workers spread out) or random; ``seed_offset`` keeps workers
    that share a spec seed from drawing identical random startup trials."""
    cfg = spec.sampler
    seed = None if cfg.seed is None else cfg.seed + seed_offset
    if cfg.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with experimental_features():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                          multivariate=cfg.multivariate, group=cfg.group, constant_liar=True)


def build_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """median | halving | hyperband | none, wrapped in PatientPruner when ``patience`` > 0, and
    (but Hyperband) in ``FidelityPruner``: trials compared only with trials of the same fidelity."""
    cfg = spec.pruner
    min_resource, reduction_factor = cfg.resources()
    try:
        if cfg.kind == "median":
            # Steps are 1-based epochs: n_warmup_steps = 1 means epoch 1 always runs, epoch 2 may be pruned.
            pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                                 n_warmup_steps=cfg.n_warmup_steps + 1)
        elif cfg.kind == "halving":
            pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                            reduction_factor=reduction_factor)
        elif cfg.kind == "hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=spec.max_epochs,
                                                    reduction_factor=reduction_factor)
        else:
            pruner = None
        if cfg.patience > 0:
            with experimental_features():
                pruner = optuna.pruners.PatientPruner(pruner, patience=cfg.patience, min_delta=cfg.min_delta)
    except ValueError as exc:
        raise UserError(f"{spec.path} [pruner]: {exc}") from None
    if pruner is None:
        return optuna.pruners.NopPruner()
    # Hyperband stays itself: TPE samples per bracket only when the study's pruner *is* a HyperbandPruner
    return pruner if isinstance(pruner, optuna.pruners.HyperbandPruner) else FidelityPruner(pruner)


class FidelityPruner(optuna.pruners.BasePruner):
    """``base``, comparing a trial only with trials of the same fidelity (its ``fidelity`` user
    attribute, ``FULL_FIDELITY`` when absent): an epoch on a quarter of the training posts is not
    judged against epochs on all of them. Median, percentile and successive halving see only those
    trials (Hyperband's brackets read the storage themselves and see every trial)."""

    def __init__(self, base: optuna.pruners.BasePruner):
        self.base = base

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.base.prune(SameFidelity(study, fidelity_of(trial)), trial)


FULL_FIDELITY = "full"


def fidelity_of(trial: optuna.trial.FrozenTrial) -> str:
    return trial.user_attrs.get("fidelity", FULL_FIDELITY)


class SameFidelity:
    """A study seen through ``get_trials`` as only its trials of one fidelity."""

    def __init__(self, study: optuna.Study, fidelity: str):
        self._study, self._fidelity = study, fidelity

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if fidelity_of(t) == self._fidelity]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


# A hyperparameter that only matters when another one has certain values: (parameter, those values).
ACTIVE_WHEN = {"hidden1": ("hidden_layers", (1, 2)), "dropout": ("hidden_layers", (1, 2)),
               "hidden2": ("hidden_layers", (2,)), "buckets": ("word_ngrams", (2, 3)),
               "lr": ("optimizer", ("adamw",)), "sgd_lr": ("optimizer", ("sgd",))}


def is_active(name: str, params: dict) -> bool:
    """Whether hyperparameter ``name`` changes the model given the other ``params`` (its model's,
    and its parent's value where it has one)."""
    if params.get("model", SEED_DEFAULTS["model"]) not in PARAMS[name].models:
        return False
    if name not in ACTIVE_WHEN:
        return True
    parent, values = ACTIVE_WHEN[name]
    if not is_active(parent, params):  # lr of a finetune trial: no optimizer choice, AdamW
        return True
    return params.get(parent, SEED_DEFAULTS[parent]) in values



def check_space(spec: Spec) -> None:
    """Errors Optuna would only raise mid-trial: log with step, a default outside its choices, an
    encoder model that cannot be found (found only, not loaded: that is for the first trial)."""
    for defaults, where in [(spec.defaults, "[defaults]"),
                            *((p, f"[defaults.{p['model']}]") for p in spec.early)]:
        for name, space in spec.search.items():
            if "choices" in space and is_active(name, defaults) and defaults[name] not in space["choices"]:
                raise UserError(f"{spec.path} [search.{name}]: {where} {name}={defaults[name]!r} is not one of the "
                                f"choices {space['choices']}; those defaults run as a trial, so add it to the choices")
    for name, space in spec.search.items():
        if space.get("log") and space.get("step") is not None:
            raise UserError(f"{spec.path} [search.{name}]: log=true cannot be combined with step={space['step']!r}; "
                            f"expected one of them")
    if set(spec.models) & set(PARAMS["encoder"].models):
        from tagsearch.learn.encoder import resolve_model

        for encoder in dict.fromkeys(p["encoder"] for p in [spec.defaults, *spec.early]):
            resolve_model(encoder)


def queued(params: dict, spec: Spec) -> dict:
    """What to enqueue for a trial of complete ``params``: the searched parameters that apply."""
    return {name: params[name] for name in spec.search if is_active(name, params)}


def suggest(trial: optuna.Trial, spec: Spec) -> dict:
    """The complete parameter dict: the spec's defaults, then what the drawn kind's own
    ``[defaults.KIND]`` sets (``Spec.kind_defaults``), overlaid with this trial's suggestions. A
    parameter that cannot matter (``hidden2`` of a 1-layer head, ``buckets`` without n-grams, a
    TF-IDF setting when the trial's ``model`` is dense) is not suggested; its default stays in the
    dict, unused."""
    params = dict(spec.defaults)
    parents = {parent for parent, _ in ACTIVE_WHEN.values()}
    for name in sorted(spec.search, key=lambda n: (n != "model", n not in parents)):  # what others depend on first
        space = spec.search[name]
        if not is_active(name, params):
            continue
        if name == "model":
            params["model"] = trial.suggest_categorical(name, space["choices"])
            params.update(spec.kind_defaults(params["model"]))
        elif "choices" in space:
            params[name] = trial.suggest_categorical(name, space["choices"])
        elif PARAMS[name].type is int:
            params[name] = trial.suggest_int(name, space["low"], space["high"], step=space.get("step", 1),
                                             log=space["log"])
        else:
            params[name] = trial.suggest_float(name, space["low"], space["high"], step=space.get("step"),
                                               log=space["log"])
    return params


# ---------------------------------------------------------------------------------------------
# Where encodings persist


def embedding_dir(storage: str | Location) -> str:
    """Where encoders' embeddings of a corpus persist on this host, shared by its workers: beside a
    local storage file (``storage/x.db`` → ``storage/embeddings``), else ``storage/embeddings``."""
    return str(Location.of(storage).embeddings)


# ---------------------------------------------------------------------------------------------
# Studies


def open_study(spec: Spec, corpus: Corpus, storage_url: str | Location | None = None, study_name: str | None = None,
               seed_offset: int = 0, storage=None) -> optuna.Study:
    """Create the study (recording the data, queueing the defaults as trial 0) or join it (refusing
    other data). Safe when several workers start at once: exactly one of them creates it.
    ``storage``: the already opened storage of ``storage_url``, if the caller has it."""
    check_space(spec)
    storage = storage or open_storage(storage_url or spec.storage)
    return create_or_join(spec, corpus, storage, study_name, seed_offset)


def create_or_join(spec: Spec, corpus: Corpus, storage: optuna.storages.BaseStorage, study_name: str | None = None,
                   seed_offset: int = 0) -> optuna.Study:
    """``open_study`` on an opened ``storage``, for a caller that checked the space (``check_space``)."""
    name = study_name or spec.name
    sampler, pruner = build_sampler(spec, seed_offset), build_pruner(spec)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        join_study(study, spec, corpus)
        return study
    start_study(study, spec, corpus)
    return study


def start_study(study: optuna.Study, spec: Spec, corpus: Corpus) -> None:
    """Queue the defaults as trial 0 (and each ``[defaults.KIND]`` after it), then record data and model (the fingerprint goes last: joining
    workers wait for it, so they never race trial 0)."""
    if not study.trials:
        study.enqueue_trial(queued(spec.defaults, spec), user_attrs={"config": "defaults"})
        for params in spec.early:  # each model's own [defaults.KIND], after trial 0
            study.enqueue_trial(queued(params, spec), user_attrs={"config": f"defaults.{params['model']}"})
    with experimental_features():
        study.set_metric_names([f"val_{spec.metric}"])
    attrs = {"model": spec.model, "spec": spec.path, "data_source": corpus.source, "split": corpus.split,
             "tags": corpus.tag_names, "posts": {"train": len(corpus.train_idx), "val": len(corpus.val_idx),
                                                 "test": len(corpus.test_idx)}, "fingerprint": corpus.fingerprint}
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def join_study(study: optuna.Study, spec: Spec, corpus: Corpus) -> None:
    """Check an existing study is ours and on this data; adopt one left undescribed by a dead creator."""
    deadline = time.monotonic() + DESCRIBE_WAIT_SECONDS
    while "fingerprint" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)  # its creator is still writing trial 0 and the attributes
    if "fingerprint" not in study.user_attrs:
        start_study(study, spec, corpus)
        return
    check_fingerprint(study, corpus)
    model = study.user_attrs.get("model")
    if model != spec.model:
        raise UserError(f"study {study.study_name!r} searches the {model!r} model but {spec.path} is a "
                        f"{spec.model!r} spec; expected the spec the study was created with, or a new --study-name")


def check_fingerprint(study: optuna.Study, corpus: Corpus) -> None:
    """UserError unless ``corpus`` is the data the study was created on (same posts, tags, split)."""
    theirs = study.user_attrs.get("fingerprint")
    if theirs is None or theirs == corpus.fingerprint:
        return
    raise UserError(f"study {study.study_name!r} was created on data with fingerprint {theirs} "
                    f"({study.user_attrs.get('data_source')}, {study.user_attrs.get('split')}), but this data "
                    f"has fingerprint {corpus.fingerprint} ({corpus.source}, {corpus.split}); expected the same "
                    f"file, --top-k and split settings, or a new --study-name")


def load_study(spec: Spec, storage_url: str | Location | None = None, study_name: str | None = None) -> optuna.Study:
    """An existing study (UserError listing the studies present when it is missing)."""
    where, name = Location.of(storage_url or spec.storage), study_name or spec.name
    storage = open_storage(where, create=False)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UserError(f"no study {name!r} in {where.masked}; expected one of: {', '.join(sorted(names)) or '(none)'}")
    return optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))

