"""The cost planner on fake rates and a fake clock, and the encoding it governs: measured on the
first chunk, left out when it would take too much of what is left, stopped at the deadline keeping
what it encoded, and not waited for by the other workers."""

import math
import threading

import numpy as np
import pytest

from tagsearch.learn import encoder as encoding
from tagsearch.learn.embedding_cache import Busy, EmbeddingCache
from tagsearch.study import planner

NOW = 1_800_000_000.0


def test_rates_extrapolate_and_nothing_measured_is_unbounded():
    assert planner.extrapolate(500, 10.0, 30_000) == pytest.approx(600.0)
    assert planner.extrapolate(0, 1.0, 10) == math.inf


@pytest.mark.parametrize("cost, left, included", [(60, 600, True), (500, 600, False), (420, 600, True),
                                                  (421, 600, False)])
def test_a_fixed_cost_is_paid_only_within_its_share_of_what_is_left(cost, left, included):
    plan = planner.fixed_cost_plan("encoder", cost, now=NOW, deadline=NOW + left, budget=600)
    assert plan.included is included
    assert plan.remaining == left


def test_a_kind_left_out_says_what_it_costs_and_which_time_would_include_it():
    """5 minutes of encoding measured 1 minute into an 8-minute search: 7 left, 70 % of that is
    4m54s; it needs 1 + 5/0.7 = 8.1 minutes of --time, i.e. 9m."""
    plan = planner.fixed_cost_plan("encoder, encoder_tfidf", 300, now=NOW + 60, deadline=NOW + 480, budget=480)
    assert not plan.included and plan.time_needed == 9 * 60
    assert plan.note() == ("encoder, encoder_tfidf left out: its fixed cost would take ~5m of the 7m left of the "
                           "search (more than 70%); --time 9m or more would include it")
    again = planner.fixed_cost_plan("e", 300, now=NOW, deadline=NOW + plan.time_needed - 60, budget=plan.time_needed)
    assert again.included  # the suggested --time does include it
    assert planner.fixed_cost_plan("e", 1e6, now=NOW, deadline=None, budget=None).included  # no deadline


def test_fidelity_applies_only_when_full_trials_would_not_fit():
    # small data: 2 s epochs, 30 epochs, 10 minutes on 2 workers: 20 full trials take 1200 s of 1200
    assert planner.fidelity_plan(2.0, 30, 600, workers=2, min_trials=20) == planner.FULL
    # large data: 20 s epochs: subsample the first rungs, the largest fraction that fits, else the smallest
    plan = planner.fidelity_plan(20.0, 10, 600, workers=2, min_trials=8)
    assert plan.fraction < 1 and plan.full_from == 3
    assert [plan.at(e) for e in (1, 2, 3, 4)] == [plan.fraction, plan.fraction, 1.0, 1.0]
    assert [plan.level(e) for e in (1, 2, 3)] == [0, 0, 1]
    assert planner.fidelity_plan(1000.0, 10, 600).fraction == 0.25
    assert planner.fidelity_plan(None, 10, 600) == planner.FULL  # nothing measured yet
    assert planner.fidelity_plan(20.0, 10, None) == planner.FULL  # no deadline


class FakeModel:
    """encode() of a sentence-transformers model: a row per text, ``seconds_per_char`` of fake time."""

    def __init__(self, clock):
        self.clock, self.calls = clock, 0

    def encode(self, texts, **_):
        self.calls += 1
        self.clock[0] += 0.001 * sum(len(t) for t in texts)
        rows = np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def fake_encoder(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(encoding.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(encoding, "CHUNK", 10)
    monkeypatch.setattr(encoding, "FIRST_CHUNK", 10)
    model = FakeModel(clock)
    enc = encoding.SentenceEncoder("fake")
    enc.weights_hash_, enc._dim = "w", 3
    monkeypatch.setattr(encoding.SentenceEncoder, "encoder_", property(lambda self: model))
    return enc, model


TEXTS = [("word " * (1 + i % 7)).strip() for i in range(45)]


def test_the_guard_sees_the_rate_of_the_first_chunk_extrapolated_per_character(fake_encoder):
    enc, _ = fake_encoder
    seen = []
    enc._transform(TEXTS, guard=seen.append)
    first = seen[0]
    assert (first.done, first.total) == (10, 45) and len(seen) == 4  # after each chunk but the last
    chars = sorted((len(t) for t in TEXTS), reverse=True)
    assert first.seconds == pytest.approx(0.001 * sum(chars[:10]))
    assert first.seconds_left == pytest.approx(0.001 * sum(chars[10:]))  # exact: the fake is per character


def test_a_stopped_encoding_is_kept_and_the_next_one_resumes_from_it(fake_encoder, tmp_path):
    enc, model = fake_encoder

    def stop_after_two_chunks(progress):
        if progress.done >= 20:
            raise KeyboardInterrupt("deadline")

    with pytest.raises(KeyboardInterrupt):
        enc.transform_corpus(TEXTS, "fp", tmp_path, guard=stop_after_two_chunks)
    assert model.calls == 2 and list(tmp_path.glob("*.partial.npz"))
    rows = enc.transform_corpus(TEXTS, "fp", tmp_path)
    assert model.calls == 5  # the 3 chunks left, not 5 again
    expected = np.array([[len(t), 1.0, 0.0] for t in TEXTS], dtype=np.float32)
    np.testing.assert_allclose(rows, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert not list(tmp_path.glob("*.partial.npz"))  # the complete entry replaces it


def test_a_worker_that_does_not_wait_is_told_busy_while_another_computes(tmp_path):
    cache, key = EmbeddingCache(tmp_path), {"k": 1}
    inside, release = threading.Event(), threading.Event()

    def slow():
        inside.set()
        release.wait(10)
        return np.zeros((2, 2), dtype=np.float32)

    thread = threading.Thread(target=cache.get_or_compute, args=(key, slow))
    thread.start()
    inside.wait(10)
    try:
        with pytest.raises(Busy):
            cache.get_or_compute(key, slow, wait=False)
    finally:
        release.set()
        thread.join()
    assert cache.get_or_compute(key, slow, wait=False).shape == (2, 2)  # finished: read, no wait


def test_an_encoding_the_budget_cannot_pay_is_left_out_once_and_said(spec_factory, clock, monkeypatch, tmp_path):
    """The real objective on an encoder-kind study with 60 s left and an encoder that would take
    minutes: the first trial measures the first chunk, is pruned saying what the encoding would cost
    and which --time would include it (a study attribute too), keeps what it encoded; the next
    encoder trial is pruned at once, without encoding."""
    import optuna

    from tagsearch.data.corpus import load_corpus
    from tagsearch.runtime import deadline
    from tagsearch.study import objective
    from tagsearch.study.spec import load_spec

    monkeypatch.setattr(encoding, "resolve_model", lambda name: (str(tmp_path), name))
    monkeypatch.setattr(encoding, "weights_hash", lambda path: "w" * 16)
    fake_time = [0.0]
    monkeypatch.setattr(encoding.time, "monotonic", lambda: fake_time[0])
    model = FakeModel(fake_time)
    monkeypatch.setattr(encoding.SentenceEncoder, "encoder_", property(lambda self: model))
    monkeypatch.setattr(encoding.SentenceEncoder, "dim_", property(lambda self: 3))
    monkeypatch.setattr(encoding, "CHUNK", 50)
    monkeypatch.setattr(encoding, "FIRST_CHUNK", 50)
    spec = load_spec(spec_factory("encoder", storage=f"sqlite:///{tmp_path}/p.db",
                                  edit=lambda raw: raw["defaults"].pop("max_features")))
    corpus = load_corpus(spec.data_config())
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(deadline.ATTR, clock.now + 60)
    study.optimize(objective.Objective(spec, corpus, device="cpu"), n_trials=2)
    first, second = study.trials
    assert first.state == second.state == optuna.trial.TrialState.PRUNED
    note = first.user_attrs["pruned_reason"]
    assert note.startswith("encoder, encoder_tfidf left out: its fixed cost would take ~") and "--time" in note
    assert second.user_attrs["pruned_reason"] == note == study.user_attrs["planner:encoding"]["note"]
    assert model.calls == 1  # one chunk measured, then nothing more
    assert list((tmp_path / "embeddings").glob("*.partial.npz"))


def test_a_trial_whose_encoding_another_worker_is_computing_is_deferred_not_failed(spec_factory, monkeypatch,
                                                                                   tmp_path):
    import optuna

    from tagsearch.data.corpus import load_corpus
    from tagsearch.learn import features
    from tagsearch.study import objective
    from tagsearch.study.spec import load_spec

    def busy(self, corpus, cache=None):
        assert cache.encoding_wait is False  # with other kinds to search, a worker never waits on another's encoding
        raise Busy("another process is computing it")

    def two_kinds(raw):
        raw["defaults"].pop("max_features")
        raw["search"]["model"] = {"choices": ["encoder", "dense"]}

    monkeypatch.setattr(encoding, "resolve_model", lambda name: (str(tmp_path), name))
    monkeypatch.setattr(features.Embeddings, "fit_corpus", busy)
    spec = load_spec(spec_factory("encoder", storage=f"sqlite:///{tmp_path}/b.db", edit=two_kinds))
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"model": "encoder"})
    study.optimize(objective.Objective(spec, load_corpus(spec.data_config()), device="cpu"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_reason"].startswith("deferred: another worker on this host is encoding")


def test_a_finetune_trial_is_predicted_from_its_prefix_rate():
    """5 frozen layers over 1,000 posts in 100 s: 20 ms a layer and post. One trained layer, 600
    training posts (forward and backward: 3 passes) and 200 validation posts, 4 epochs, 3 folds:
    0.02 * (1800 + 200) * 4 * 3 = 480 s. Nothing frozen: nothing measured to predict from."""
    assert planner.finetune_seconds(100.0, 1000, 5, 1, 600, 200, 4, 3) == pytest.approx(480.0)
    assert planner.finetune_seconds(100.0, 1000, 0, 6, 600, 200, 4, 3) is None
