"""A time budget for the study as a whole: the first worker to bring one records the study's
deadline; every worker reads it, starts no trial past it, and a running trial stops at its next
epoch boundary, COMPLETE with its best epoch's value. Time is a fake clock (runtime.deadline.clock),
so nothing here waits on the wall clock."""

from __future__ import annotations

import optuna
import pytest

from conftest import write_spec
from tagsearch.cli import duration, main
from tagsearch.data.corpus import load_corpus
from tagsearch.errors import UserError
from tagsearch.learn import train
from tagsearch.runtime import deadline
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.storage import open_storage
from tagsearch.runtime.trials import run_trials
from tagsearch.study import search
from tagsearch.study import objective
from tagsearch.study.spec import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState


def test_a_worker_joining_later_keeps_the_deadline_the_first_one_recorded(tmp_path, clock):
    """Two workers started 2 minutes apart, each with --time 4m, trials of 50 s: the first records
    the deadline (start + 4 min); the second keeps it (not its own start + 4 min) and starts no trial
    at or past it; a third, with no budget of its own, starts none either."""
    url = f"sqlite:///{tmp_path}/timed.db"
    optuna.create_study(storage=open_storage(url), study_name="timed")
    starts = []

    def objective(trial: optuna.Trial) -> float:
        starts.append(clock.now)
        clock.now += 50
        return 0.0

    def worker(budget: float | None, target: int) -> int:
        study = optuna.load_study(study_name="timed", storage=open_storage(url))  # a worker's own handle
        return run_trials(study, objective, target, lock=BudgetLock.of(study, url), time_budget=budget)

    t0 = clock.now
    assert worker(240, 2) == 0  # the first worker's trial budget runs out before its time
    study = optuna.load_study(study_name="timed", storage=open_storage(url))
    assert deadline.recorded(study) == t0 + 240
    clock.now = t0 + 120
    assert worker(240, 100) == 0
    assert deadline.recorded(study) == t0 + 240
    assert starts == [t0, t0 + 50, t0 + 120, t0 + 170, t0 + 220]  # its own 4 minutes would have allowed more
    assert worker(None, 100) == 0
    assert len(study.get_trials()) == 5 and all(t.state == State.COMPLETE for t in study.get_trials())


def test_a_worker_on_a_study_whose_deadline_has_passed_starts_no_trial(tmp_path, tiny_csv, clock, capsys):
    url = f"sqlite:///{tmp_path}/late.db"
    spec_path = write_spec(tmp_path / "tfidf.toml", model="tfidf", data=tiny_csv, storage=url)
    spec = load_spec(spec_path)
    study = search.open_study(spec, load_corpus(spec.data_config()), url)
    study.set_user_attr(deadline.ATTR, clock.now - 1)
    assert main(["worker", str(spec_path), "--time", "4m"]) == 0  # a new budget does not move it
    assert [t.state for t in study.get_trials()] == [State.WAITING]  # [defaults], still queued
    assert deadline.recorded(study) == clock.now - 1


@pytest.mark.parametrize("after_epoch_1", ["the clock passes the deadline", "tune's Ctrl-C brings it to now"])
def test_a_trial_running_at_the_deadline_stops_at_the_next_epoch_complete(after_epoch_1, tmp_path, tiny_csv, clock,
                                                                         monkeypatch):
    """The real objective; the deadline passes during epoch 2 of 4 — the clock moves past it, or
    another process (tune's supervisor, on its first Ctrl-C) brings it to now, which the worker reads
    after the epoch: the trial stops after epoch 2, as early stopping stops one (best epoch's value,
    learning curve, attributes), and no trial follows."""
    url = f"sqlite:///{tmp_path}/stop.db"
    spec_path = write_spec(tmp_path / "tfidf.toml", model="tfidf", data=tiny_csv, storage=url,
                           edit=lambda raw: raw["training"].update(max_epochs=4, patience=4, folds=1))
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus, url)
    supervisor = optuna.load_study(study_name=study.study_name, storage=open_storage(url))  # its own handle
    fit_folds = train.fit_folds

    def deadline_passes_after_epoch_1(*args, on_epoch, **kwargs):
        def hook(epoch, record):
            on_epoch(epoch, record)
            if epoch == 1 and after_epoch_1.startswith("the clock"):
                clock.now += 3600  # epoch 2 ends an hour later: past the 10-minute budget
            elif epoch == 1:
                deadline.stop_now(supervisor)
        return fit_folds(*args, on_epoch=hook, **kwargs)

    monkeypatch.setattr(train, "fit_folds", deadline_passes_after_epoch_1)
    assert run_trials(study, objective.Objective(spec, corpus), 3, lock=BudgetLock.of(study, url),
                      time_budget=600) == 0
    (trial,) = study.get_trials()
    assert trial.state == State.COMPLETE
    attrs, curve = trial.user_attrs, trial.user_attrs["learning_curve"]
    assert attrs["epochs_run"] == len(curve) == 2 and sorted(trial.intermediate_values) == [1, 2]
    assert attrs["stopped_early"] is True and attrs["stopped_at_deadline"] is True
    best = attrs["best_epoch"]
    assert trial.value == trial.intermediate_values[best] == min(trial.intermediate_values.values())
    assert {"params", "threshold_choice", "thresholds", "val_hamming_loss", "train_seconds"} <= set(attrs)


@pytest.mark.parametrize("cut_in", [1, 2])
def test_a_deadline_inside_an_epoch_cuts_it_short(cut_in, tmp_path, tiny_csv, clock, monkeypatch):
    """An epoch asks the deadline every few batches (here every batch), not only at its end: the
    deadline passing inside epoch 2 ends the trial with epoch 1's value (COMPLETE, epoch 2 not
    scored); inside epoch 1, with nothing scored, the trial is PRUNED and says why."""
    url = f"sqlite:///{tmp_path}/cut.db"
    spec_path = write_spec(tmp_path / "tfidf.toml", model="tfidf", data=tiny_csv, storage=url,
                           edit=lambda raw: raw["training"].update(max_epochs=4, patience=4, folds=1))
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus, url)
    monkeypatch.setattr(train, "STOP_CHECK_EVERY", 1)
    train_epoch, epochs = train.train_epoch, []

    def epoch_during_which_the_clock_passes_the_deadline(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == cut_in:
            clock.now += 3600
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", epoch_during_which_the_clock_passes_the_deadline)
    assert run_trials(study, objective.Objective(spec, corpus), 3, lock=BudgetLock.of(study, url),
                      time_budget=600) == 0
    (trial,) = study.get_trials()
    if cut_in == 1:
        assert trial.state == State.PRUNED and "during epoch 1" in trial.user_attrs["pruned_reason"]
        assert trial.intermediate_values == {}
    else:
        assert trial.state == State.COMPLETE and sorted(trial.intermediate_values) == [1]
        assert trial.user_attrs["epochs_run"] == 1 and trial.user_attrs["stopped_at_deadline"] is True


def test_a_time_budget_on_the_command_line_and_in_the_spec(spec_factory, capsys):
    assert [duration(t) for t in ("90s", "10m", "2h", "600", "1.5h", "2M")] == [90, 600, 7200, 600, 5400, 120]
    for bad in ("10x", "m", "-5m", "0", "inf"):
        assert main(["worker", str(spec_factory()), f"--time={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: argument --time: ") and f"{bad!r}" in err and err.count("\n") == 1
    assert load_spec(spec_factory(edit=lambda raw: raw["study"].update(time_budget=600))).time_budget == 600
    for bad, expected in ((-1, "out of range"), ("10m", "wrong type")):
        with pytest.raises(UserError, match=f"time_budget=.*{expected}"):
            load_spec(spec_factory(edit=lambda raw: raw["study"].update(time_budget=bad)))
