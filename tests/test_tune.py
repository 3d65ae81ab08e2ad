"""#21: one study over every model kind (studies/tagger.toml), and ``tagsearch tune``'s pieces: the
spec it writes, the kinds it keeps, the deadline it renews and that its first Ctrl-C brings forward
(a trial stopped by that: tests/test_deadline.py), and the supervisor's soft stop. The whole command end to end is tests/test_demo.py's (demo = tune)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tagsearch import tune as tuning
from tagsearch.cli import main
from tagsearch.data.corpus import load_corpus
from tagsearch.errors import UserError
from tagsearch.runtime import deadline, launch
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.progress import UNLIMITED
from tagsearch.runtime.storage import open_storage
from tagsearch.study import search
from tagsearch.study.search import is_active
from tagsearch.study.spec import load_spec, parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState
STUDIES = Path(__file__).resolve().parents[1] / "studies"


def active(params: dict) -> dict:
    return {k: v for k, v in params.items() if is_active(k, params)}


# ---------------------------------------------------------------------------------------------
# studies/tagger.toml: every kind, each kind's defaults queued after the seed's trial 0


def test_tagger_spec_runs_each_kinds_own_defaults_right_after_the_seeds_dense_trial(tmp_path, tiny_csv):
    tagger = load_spec(STUDIES / "tagger.toml")
    assert set(tagger.models) == {"dense", "tfidf", "encoder", "encoder_tfidf", "finetune"}
    expected = [load_spec(STUDIES / "dense.toml").defaults, load_spec(STUDIES / "encoder.toml").defaults,
                load_spec(STUDIES / "tfidf.toml").defaults, {**load_spec(STUDIES / "encoder.toml").defaults,
                                                             "model": "encoder"},
                load_spec(STUDIES / "finetune.toml").defaults]
    # the same values as the one-kind specs' [defaults] (a drift between them fails here)
    assert [active(p) for p in [tagger.defaults, *tagger.early]] == [active(p) for p in expected]
    url = f"sqlite:///{tmp_path}/tagger.db"
    study = search.open_study(tagger, load_corpus(tagger.data_config(str(tiny_csv))), url)
    asked = [study.ask() for _ in range(6)]
    drawn = [search.suggest(trial, tagger) for trial in asked]
    assert [active(p) for p in drawn[:5]] == [active(p) for p in expected]
    assert [t.user_attrs["config"] for t in asked[:5]] == ["defaults", "defaults.encoder_tfidf", "defaults.tfidf",
                                                           "defaults.encoder", "defaults.finetune"]
    assert "config" not in asked[5].user_attrs  # then the sampler's own
    assert set(asked[1].params) == {k for k in tagger.search if is_active(k, expected[1])}  # only what applies


@pytest.mark.parametrize("table, message", [
    ({"lstm": {"hidden1": 8}}, r"\[defaults.lstm\]: unknown model 'lstm'"),
    ({"encoder": {"hidden1": 8}}, r"\[defaults.encoder\]: 'encoder' is not one of the spec's models"),
    ({"tfidf": {"model": "dense"}}, r"model='dense' contradicts the table's name"),
    ({"tfidf": {"hidden1": "big"}}, r"\[defaults.tfidf\]: hidden1='big' is not an integer"),
])
def test_a_defaults_table_per_kind_is_checked(table, message):
    raw = {"study": {"name": "x"}, "defaults": {"model": "dense", **table},
           "search": {"model": {"choices": ["dense", "tfidf"]}}}
    with pytest.raises(UserError, match=message):
        parse_spec(raw, "x.toml")


def test_a_kinds_default_outside_its_choices_is_refused_before_any_trial(spec_factory):
    path = spec_factory("dense", extra='[search.model]\nchoices = ["dense", "tfidf"]\n'
                                       '[search.max_features]\nchoices = [500, 1000]\n'
                                       '[defaults.tfidf]\nmax_features = 5000\n')
    with pytest.raises(UserError, match=r"\[defaults.tfidf\] max_features=5000 is not one of the choices"):
        search.check_space(load_spec(path))


# ---------------------------------------------------------------------------------------------
# The spec tune writes, and the kinds it keeps


def tagger_raw() -> dict:
    import tomllib

    return tomllib.loads((STUDIES / "tagger.toml").read_text(encoding="utf-8"))


def test_tune_spec_searches_the_kept_kinds_and_the_first_kept_kinds_defaults_become_trial_0(tmp_path):
    raw = tuning.tune_spec(tagger_raw(), name="t", storage="sqlite:///x.db", data="/d/posts.csv", metric="micro_f1",
                           time_budget=90, models=("tfidf", "encoder_tfidf"), top_k=5, tags_column="labels")
    spec = parse_spec(raw, "t.toml")
    assert spec.models == ("tfidf", "encoder_tfidf") and spec.metric == "micro_f1" and spec.direction == "maximize"
    assert spec.defaults["model"] == "encoder_tfidf" and [p["model"] for p in spec.early] == ["tfidf"]
    assert active(spec.defaults) == active(load_spec(STUDIES / "encoder.toml").defaults)
    assert not {"embedding_dim", "min_freq", "word_ngrams", "buckets"} & set(spec.search)  # dense's alone: gone
    assert spec.time_budget == 90 and spec.n_trials == UNLIMITED and spec.name == "t"
    assert spec.data.path == "/d/posts.csv" and spec.data.top_k == 5 and spec.data.tags_column == "labels"
    every = parse_spec(tuning.tune_spec(tagger_raw(), name="t", storage="sqlite:///x.db", data="builtin", metric=None,
                                        time_budget=60, models=load_spec(STUDIES / "tagger.toml").models, n_trials=7),
                       "t.toml")
    assert every.defaults["model"] == "dense" and len(every.early) == 4 and every.n_trials == 7


def test_tune_leaves_out_the_encoder_kinds_where_the_encoder_cannot_load_and_says_why(monkeypatch, capsys):
    from tagsearch.learn import encoder

    def missing(name):
        raise UserError(f"the encoder model {name!r} needs sentence-transformers, which is not installed")

    monkeypatch.setattr(encoder, "resolve_model", missing)
    tagger = load_spec(STUDIES / "tagger.toml")
    assert tuning.usable_models(tagger, None) == ("dense", "tfidf")
    assert "leaving out encoder, encoder_tfidf, finetune: the encoder model" in capsys.readouterr().err
    with pytest.raises(UserError, match="--models: 'lstm' is not searched"):
        tuning.usable_models(tagger, ("tfidf", "lstm"))


def test_study_names_and_devices():
    assert tuning.default_study_name("/x/Stack Exchange (robotics).csv") == "tagger-Stack-Exchange-robotics"
    assert tuning.default_study_name("builtin") == "tagger-builtin"
    assert tuning.pick_devices("cpu", None) == ("cpu", min(tuning.MAX_CPU_WORKERS, launch.cpu_count()))
    assert tuning.pick_devices("cpu", 3) == ("cpu", 3)


@pytest.mark.parametrize("argv, expected", [
    (["tune", "nope.csv"], "error: data file 'nope.csv' not found"),
    (["tune", "builtin", "--time", "0"], "error: argument --time: '0' is out of range"),
    (["tune", "builtin", "--models", "tfidf,lstm"], "error: argument --models: 'lstm' is not a model kind"),
    (["tune", "builtin", "--metric", "accuracy"], "error: argument --metric: invalid choice: 'accuracy'"),
])
def test_tune_mistakes_are_one_error_line(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert not (tmp_path / "storage").exists()  # nothing written for a refused command


# ---------------------------------------------------------------------------------------------
# The deadline a tune renews, and the stop its first Ctrl-C makes


def test_a_new_tune_session_renews_a_passed_deadline_and_stop_now_only_brings_it_forward(tmp_path, clock):
    url = f"sqlite:///{tmp_path}/d.db"
    study = optuna.create_study(storage=open_storage(url), study_name="d")
    lock = BudgetLock(url, "d")
    try:
        t0 = clock.now
        assert deadline.establish(study, 240, lock) == t0 + 240
        clock.now = t0 + 1000  # the first session is long over; a resumed tune gets its own time
        assert deadline.establish(study, 240, lock) == t0 + 240  # a worker's budget never moves it
        assert deadline.renew(study, 300, lock) == t0 + 1300
        assert deadline.renew(study, 60, lock) == t0 + 1300  # another session still running keeps its time
        deadline.stop_now(study)
        assert deadline.recorded(study) == t0 + 1000
        clock.now += 50
        deadline.stop_now(study)  # already past: stays
        assert deadline.recorded(study) == t0 + 1000
    finally:
        lock.close()


# ---------------------------------------------------------------------------------------------
# The supervisor: a soft stop first, then the workers are interrupted


def sleepers(seconds: float, count: int, tmp_path: Path) -> list:
    log = tmp_path / "w.log"
    log.write_text("")
    return [(subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"]), log)
            for _ in range(count)]


def test_the_first_signal_calls_the_soft_stop_and_the_workers_exit_on_their_own(tmp_path):
    study = optuna.create_study()
    children = sleepers(3, 2, tmp_path)
    stops = []
    timer = __import__("threading").Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = launch.supervise(study, children, UNLIMITED, soft_stop=lambda: stops.append(1))
    finally:
        timer.cancel()
    assert code == 0 and stops == [1] and [p.returncode for p, _ in children] == [0, 0]  # none was signalled


def test_a_second_signal_interrupts_the_workers(tmp_path):
    study = optuna.create_study()
    children = sleepers(60, 2, tmp_path)
    stops = []

    def soft_stop():
        stops.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again

    timer = __import__("threading").Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = launch.supervise(study, children, UNLIMITED, soft_stop=soft_stop)
    finally:
        timer.cancel()
    assert code == 130 and stops == [1] and [p.returncode for p, _ in children] == [-signal.SIGTERM] * 2


def test_a_search_that_completes_no_trial_is_one_error_line_not_a_retrain_error(tmp_path, tiny_csv, monkeypatch,
                                                                                 capsys):
    """--time too short for one trial: the workers (here: none) leave the study without a complete trial."""
    def no_trials(spec, *, storage, study_name, **kwargs):
        optuna.create_study(storage=open_storage(storage), study_name=study_name)
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tuning.workers, "launch", no_trials)
    assert main(["tune", str(tiny_csv), "--time", "2s", "--models", "tfidf", "--devices", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: no trial of study 'tagger-tiny' completed in \d\d:\d\d of search; "
                        r"expected a longer --time", err)  # the clock shown: however long this machine took
    spec = load_spec(tmp_path / "storage" / "tagger-tiny.toml")  # the spec it wrote, for a rerun
    assert spec.models == ("tfidf",) and spec.time_budget == 2


def test_a_sampled_trial_of_a_kind_starts_from_that_kinds_own_defaults(tmp_path, tiny_csv):
    """A setting the spec does not search comes from the drawn kind's [defaults.KIND]: a sampled
    finetune trial reads 128 tokens (its own), an encoder trial 256, whatever trial 0 says."""
    import optuna

    tagger = load_spec(STUDIES / "tagger.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for kind, tokens in [("finetune", 128), ("encoder", 256), ("dense", 256)]:
        study.enqueue_trial({"model": kind})
        params = search.suggest(study.ask(), tagger)
        assert params["model"] == kind and params["max_seq_length"] == tokens


def test_tune_reads_one_spec_file_and_hands_the_study_spec_it_wrote_down_as_a_value(tmp_path, tiny_csv, monkeypatch):
    """The spec is parsed once per process: tune reads studies/tagger.toml, makes its study's spec
    from it, writes that once, and its search, counts and candidates get the value, not the path."""
    import tomllib

    from tagsearch.study.spec import Spec

    reads, seen = [], {}
    real_loads = tomllib.loads
    monkeypatch.setattr(tomllib, "loads", lambda text, **kw: reads.append(1) or real_loads(text, **kw))

    def search_once(spec, *, storage, study_name, **kwargs):
        seen["launch"] = spec
        study = optuna.create_study(storage=open_storage(storage), study_name=study_name)
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
        return 0

    class Stop(Exception):
        pass

    def candidates(spec, *args, **kwargs):
        seen["gather"] = spec
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tuning.workers, "launch", search_once)
    monkeypatch.setattr(tuning, "gather", candidates)
    with pytest.raises(Stop):
        tuning.tune(str(tiny_csv), time_budget=2, models=("tfidf",), devices="cpu")
    assert len(reads) == 1  # studies/tagger.toml; the written storage/tagger-tiny.toml is not read back
    written = tmp_path / "storage" / "tagger-tiny.toml"
    assert isinstance(seen["launch"], Spec) and seen["gather"] is seen["launch"]
    assert seen["launch"].path == str(Path("storage") / "tagger-tiny.toml")
    assert load_spec(written).replace(path=seen["launch"].path) == seen["launch"] and seen["launch"].to_toml() in written.read_text(encoding="utf-8")
