"""The search layer in-process: storage URLs, the objective, trial 0, failures, pruning, fingerprints."""

from __future__ import annotations

import sqlite3

import optuna
import pytest

from tagsearch.study import search

from tagsearch.study import objective
from tagsearch.runtime import location, storage
from tagsearch.learn import train
from tagsearch.cli import main
from tagsearch.data.corpus import load_corpus
from tagsearch.errors import UserError
from tagsearch.study.config import PrunerConfig
from tagsearch.study.spec import load_spec
from tagsearch.runtime.outcomes import requeue
from tagsearch.runtime.trials import run_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage")]


@pytest.fixture
def study_setup(tmp_path, spec_factory):
    """A tiny dense spec, its corpus, and a fresh SQLite URL."""
    spec = load_spec(spec_factory("dense"))
    return spec, load_corpus(spec.data_config()), f"sqlite:///{tmp_path}/db/s.db"


# ---------------------------------------------------------------------------------------------
# Storage URLs


@pytest.mark.parametrize("url", ["storage/x.db", "http://host/db", "sqlite:/x.db", "journal://", ""])
def test_malformed_storage_url_is_a_user_error(url):
    with pytest.raises(UserError, match="storage"):
        storage.open_storage(url)


@pytest.mark.parametrize("url", ["postgresql://me:secret@127.0.0.1:1/db", "mysql+pymysql://me:secret@127.0.0.1:1/db",
                                 "redis://127.0.0.1:1/0"])
def test_unreachable_storage_is_a_user_error_with_password_masked(url):
    with pytest.raises(UserError, match="cannot open storage") as info:
        storage.open_storage(url)
    assert "secret" not in str(info.value)


def test_sqlite_storage_creates_its_folder_and_uses_wal(tmp_path):
    url = f"sqlite:///{tmp_path}/new/dir/x.db"
    storage.open_storage(url)
    mode = sqlite3.connect(tmp_path / "new/dir/x.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_missing_storage_file_is_refused_when_only_reading(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        storage.open_storage(f"sqlite:///{tmp_path}/absent.db", create=False)


def test_artifact_dir_sits_beside_a_local_file():
    assert str(location.artifact_dir("sqlite:///storage/tagsearch.db")) == "storage/tagsearch-artifacts"
    assert str(location.artifact_dir("sqlite:////tmp/a/t.db")) == "/tmp/a/t-artifacts"
    assert str(location.artifact_dir("journal:///runs/x.log")) == "runs/x-artifacts"
    assert str(location.artifact_dir("postgresql://u@h/db")) == "storage/artifacts"


def test_heartbeat_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TAGSEARCH_HEARTBEAT", "2")
    monkeypatch.setenv("TAGSEARCH_GRACE", "5")
    settings = storage.heartbeat_settings()
    assert (settings["heartbeat_interval"], settings["grace_period"]) == (2, 5)
    monkeypatch.setenv("TAGSEARCH_GRACE", "1")
    with pytest.raises(UserError, match="TAGSEARCH_GRACE"):
        storage.heartbeat_settings()


# ---------------------------------------------------------------------------------------------
# Sampler, pruner, space


def test_pruners_from_the_spec(spec_factory):
    def built(pruner):  # under the fidelity filter, but Hyperband's
        return pruner.base if isinstance(pruner, search.FidelityPruner) else pruner

    spec = load_spec(spec_factory("dense"))
    assert isinstance(built(search.build_pruner(spec)), optuna.pruners.MedianPruner)
    for kind, cls in [("halving", optuna.pruners.SuccessiveHalvingPruner),
                      ("hyperband", optuna.pruners.HyperbandPruner), ("none", optuna.pruners.NopPruner)]:
        spec = spec.replace(pruner=PrunerConfig(kind=kind))
        assert isinstance(built(search.build_pruner(spec)), cls)
    spec = spec.replace(pruner=PrunerConfig(kind="hyperband"))  # itself: TPE samples per bracket only for a HyperbandPruner
    assert isinstance(search.build_pruner(spec), optuna.pruners.HyperbandPruner)
    spec = spec.replace(pruner=PrunerConfig(kind="median", patience=2))
    assert isinstance(built(search.build_pruner(spec)), optuna.pruners.PatientPruner)
    spec = spec.replace(pruner=PrunerConfig(kind="halving", reduction_factor=1))
    with pytest.raises(UserError, match=r"\[pruner\]"):
        search.build_pruner(spec)


def test_default_outside_its_choices_is_refused(spec_factory):
    spec = load_spec(spec_factory("dense", extra="[search.batch_size]\nchoices = [32, 256]\n"))
    with pytest.raises(UserError, match="batch_size=64 is not one of the choices"):
        search.check_space(spec)


def test_suggest_overlays_the_defaults(spec_factory):
    spec = load_spec(spec_factory("dense", extra="[search.hidden1]\nlow = 8\nhigh = 64\n"))
    trial = optuna.create_study().ask()
    params = search.suggest(trial, spec)
    assert set(params) == set(spec.defaults)
    assert isinstance(params["hidden1"], int) and 8 <= params["hidden1"] <= 64
    assert 1e-4 <= params["lr"] <= 1e-1 and params["embedding_dim"] == 16


def test_suggest_skips_parameters_that_cannot_matter(spec_factory):
    """hidden1/hidden2/dropout only with the hidden layers that use them; buckets only with n-grams;
    the learning rate of the optimizer the trial uses."""
    extra = ("[search.hidden_layers]\nchoices = [0, 1, 2]\n[search.hidden1]\nlow = 8\nhigh = 64\n"
             "[search.hidden2]\nlow = 8\nhigh = 64\n[search.word_ngrams]\nlow = 1\nhigh = 2\n"
             "[search.buckets]\nchoices = [1000, 4000]\n[search.optimizer]\nchoices = [\"adamw\", \"sgd\"]\n"
             "[search.sgd_lr]\nlow = 0.01\nhigh = 10.0\nlog = true\n")
    spec = load_spec(spec_factory("dense", extra=extra))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = search.suggest(trial, spec)
        layers, suggested = params["hidden_layers"], set(trial.params)
        assert ("hidden1" in suggested) == (layers >= 1) and ("hidden2" in suggested) == (layers == 2)
        assert ("buckets" in suggested) == (params["word_ngrams"] == 2)
        assert ("lr" in suggested) == (params["optimizer"] == "adamw") != ("sgd_lr" in suggested)
        seen.add(layers)
        study.tell(trial, 0.5)
    assert seen == {0, 1, 2}


def test_objective_reports_each_epoch_and_records_why_it_pruned(study_setup):
    spec, corpus, _ = study_setup
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # any loss > 0 prunes
    study.optimize(objective.Objective(spec, corpus), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    assert trial.user_attrs["pruned_reason"].startswith("pruned at epoch 1: val_hamming_loss")
    assert trial.user_attrs["epochs_run"] == 1 and trial.user_attrs["best_epoch"] == 1
    curve = trial.user_attrs["learning_curve"]
    assert len(curve) == 1 and curve[0]["val_hamming_loss"] == pytest.approx(trial.intermediate_values[1], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Studies end to end (in-process, tiny data)


def test_study_runs_its_budget_with_defaults_first(study_setup):
    spec, corpus, url = study_setup
    study = search.open_study(spec, corpus, url)
    assert run_trials(study, objective.Objective(spec, corpus), target=3) == 0
    trials = study.get_trials()
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 0
    assert search.progress(study).finished == 3 == len(trials)
    first = trials[0]
    assert first.params == {"dropout": spec.defaults["dropout"], "lr": spec.defaults["lr"]}
    assert first.user_attrs["params"] == spec.defaults
    for key in ("model", "metric", "epochs_run", "best_epoch", "train_seconds", "parameters", "val_micro_f1",
                "val_macro_f1", "val_per_class_f1", "device", "worker", "learning_curve", "threshold_choice",
                "thresholds", "threshold_scores"):
        assert key in first.user_attrs, key
    assert set(first.user_attrs["val_per_class_f1"]) == set(corpus.tag_names)
    assert sorted(first.intermediate_values) == list(range(1, first.user_attrs["epochs_run"] + 1))
    assert study.user_attrs["fingerprint"] == corpus.fingerprint and study.user_attrs["model"] == "dense"
    assert study.user_attrs["tags"] == corpus.tag_names and study.user_attrs["split"] == corpus.split
    # Resuming to a larger budget continues the same study without queueing the defaults again.
    again = search.open_study(spec, corpus, url)
    run_trials(again, objective.Objective(spec, corpus), target=4)
    assert search.progress(again).finished == 4
    assert sum(t.user_attrs.get("config") == "defaults" for t in again.trials) == 1


def test_training_error_fails_the_trial_and_the_worker_goes_on(study_setup, monkeypatch):
    spec, corpus, url = study_setup
    real, calls = train.fit_folds, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise train.NonFiniteLossError("training loss became nan (diverged); try a lower lr")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "fit_folds", flaky)
    study = search.open_study(spec, corpus, url)
    assert run_trials(study, objective.Objective(spec, corpus), target=2) == 0
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "NonFiniteLossError" in failed[0].user_attrs["fail_reason"]
    assert search.progress(study).finished == 2


def test_a_worker_whose_trials_keep_failing_stops_with_an_error(study_setup, monkeypatch):
    spec, corpus, url = study_setup

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(train, "fit_folds", broken)
    monkeypatch.setattr("tagsearch.runtime.trials.MAX_CONSECUTIVE_FAILURES", 2)
    study = search.open_study(spec, corpus, url)
    assert run_trials(study, objective.Objective(spec, corpus), target=5) == 1
    assert search.progress(study).failed == 2


def test_interrupted_trial_is_queued_again(study_setup):
    spec, corpus, url = study_setup
    study = search.open_study(spec, corpus, url)
    trial = study.ask()  # trial 0: the queued defaults
    trial.set_user_attr("fail_reason", "interrupted")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    requeue(study, study.get_trials()[trial.number], lost=False)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0


def test_worker_on_other_data_is_refused(study_setup, spec_factory, capsys):
    spec, corpus, url = study_setup
    search.open_study(spec, corpus, url)
    code = main(["worker", spec.path, "--storage", url, "--top-k", "5", "--n-trials", "1"])
    message = capsys.readouterr().err
    assert code == 2 and message.startswith("error: ") and corpus.fingerprint in message
    assert message.count("fingerprint") >= 2


def test_load_study_lists_the_studies_present(study_setup):
    spec, corpus, url = study_setup
    search.open_study(spec, corpus, url)
    assert search.load_study(spec, url).study_name == spec.name
    with pytest.raises(UserError, match=f"no study 'nope'.*{spec.name}"):
        search.load_study(spec, url, "nope")


def test_journal_storage_runs_a_study(tmp_path, spec_factory):
    spec = load_spec(spec_factory("tfidf"))
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus, f"journal:///{tmp_path}/j/study.log")
    assert run_trials(study, objective.Objective(spec, corpus), target=2, wait_for_running=False) == 0
    assert search.progress(study).finished == 2
    assert (tmp_path / "j" / "study.log").is_file()


def test_sqlite_workers_never_pop_the_same_queued_trial(tmp_path):
    """Four connections asking at once: every queued trial goes to exactly one (optuna/optuna#4002)."""
    import threading

    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(storage=storage.open_storage(url), study_name="race")
    for x in range(24):
        study.enqueue_trial({"x": x})
    numbers, start = [], threading.Barrier(4)

    def ask_six():
        mine = optuna.load_study(study_name="race", storage=storage.open_storage(url))
        start.wait()
        numbers.extend(mine.ask().number for _ in range(6))

    threads = [threading.Thread(target=ask_six) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(24))

