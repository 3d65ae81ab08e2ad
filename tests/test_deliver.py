"""#28: the best model fitted is the model delivered. The candidates after a search (the best network
of each kind retrained, the tuned baseline, a greedy ensemble), the choice on validation, and
``predict`` on a folder of each kind giving the probabilities its figures were computed from."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from conftest import write_spec
from tagsearch.cli import main
from tagsearch.data.corpus import load_corpus
from tagsearch.learn.metrics import choose_thresholds, summary
from tagsearch.results import candidates as candidates_module
from tagsearch.results import compare, ensemble, predict
from tagsearch.results.deliver import CANDIDATES_FILE, deliver
from tagsearch.results import folder as results_folder
from tagsearch.results.folder import sha256
from tagsearch.errors import UserError
from tagsearch.runtime.trials import run_trials
from tagsearch.study import objective, search
from tagsearch.study.spec import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
METRIC = "hamming_loss"


# ---------------------------------------------------------------------------------------------
# Greedy ensemble selection on constructed predictions


def labels(n_posts: int = 400, n_tags: int = 6, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n_posts, n_tags)) < 0.3).astype(np.uint8)


def informative(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Probabilities that rank the true tags above the others, blurred by ``noise``."""
    rng = np.random.default_rng(seed)
    return np.clip(0.25 + 0.5 * y + rng.normal(0, noise, y.shape), 0, 1)


def test_a_dominant_member_gets_all_the_weight():
    y = labels()
    rng = np.random.default_rng(1)
    # every true tag above every other: nothing can do better than it
    good = np.where(y == 1, rng.uniform(0.6, 1.0, y.shape), rng.uniform(0.0, 0.4, y.shape))
    worse = informative(y, 0.3, 1)  # informative, but it errs
    assert choose_thresholds(y, worse, METRIC).value > 0
    counts, value = ensemble.greedy(y, [worse, good], METRIC)  # listed first: a tie would favour it
    assert counts.tolist() == [0, 1]
    assert value == 0.0


def test_two_complementary_members_are_both_kept_and_beat_each():
    y = labels()
    # each knows half the tags and says 0.5 (nothing) on the others
    left, right = np.full(y.shape, 0.5), np.full(y.shape, 0.5)
    left[:, :3], right[:, 3:] = informative(y, 0.15, 2)[:, :3], informative(y, 0.15, 3)[:, 3:]
    unrelated = np.random.default_rng(4).random(y.shape)
    counts, value = ensemble.greedy(y, [unrelated, left, right], METRIC)
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0
    alone = min(choose_thresholds(y, p, METRIC).value for p in (left, right))
    assert value < alone


def test_cross_fitted_weights_never_see_the_posts_they_score():
    """A member that is perfect on group 0's posts (it memorised them) and wrong elsewhere would win a
    selection that saw group 0; group 0 is scored with weights chosen on the other groups alone."""
    y = labels(n_posts=300)
    groups = np.repeat([0, 1, 2], 100)
    honest = informative(y, 0.3, 5)
    memorised = np.where(groups[:, None] == 0, y.astype(float), 1 - y)  # perfect on 0, inverted elsewhere
    probs, chosen = ensemble.cross_fitted(y, [honest, memorised], METRIC, groups)
    assert chosen[0] == [1, 0]  # chosen on groups 1 and 2, where the memorised member is wrong
    assert np.allclose(probs[groups == 0], honest[groups == 0])  # not the memorised (perfect) ones
    assert ensemble.greedy(y[groups == 0], [honest[groups == 0], memorised[groups == 0]], METRIC)[0].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# The candidates of a tiny two-kind study, delivered


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_csv):
    """A finished tiny study over the dense and tfidf kinds, and its candidates (networks, the TF-IDF
    baseline, the ensemble) under ``root``, the best delivered to ``out``."""
    folder = tmp_path_factory.mktemp("deliver")
    url = f"sqlite:///{folder}/studies.db"

    def two_kinds(raw):
        raw["search"]["model"] = {"choices": ["dense", "tfidf"]}
        raw["defaults"]["tfidf"] = {"max_features": 500, "ngram_max": 1}
        raw["study"]["name"] = "deliver"
        raw["pruner"] = {"kind": "none"}  # every trial completes: both kinds have a best trial

    spec_path = write_spec(folder / "deliver.toml", model="dense", data=tiny_csv, storage=url, edit=two_kinds)
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus)
    run_trials(study, objective.Objective(spec, corpus), 3, wait_for_running=False)
    root, out = folder / "results" / "deliver.candidates", folder / "results" / "deliver"
    found = candidates_module.gather(spec_path, url, "deliver", root, METRIC, encoder_baseline=False,
                                     embedding_dir=None)
    chosen = deliver(found, METRIC, out)
    return {"found": found, "chosen": chosen, "out": out, "root": root, "corpus": corpus, "folder": folder}


def test_every_kind_is_a_candidate_and_the_delivered_one_is_best_on_validation(searched):
    found, out = searched["found"], searched["out"]
    kinds = {c.name: c.kind for c in found}
    assert {"dense", "tfidf", "baseline-tfidf"} <= set(kinds)
    assert kinds["dense"] == kinds["tfidf"] == "network" and kinds["baseline-tfidf"] == "baseline"
    delivered = json.loads((out / "metrics.json").read_text())["validation_value"]
    assert all(delivered <= c.validation_value for c in found)  # Hamming loss: lower is better
    record = json.loads((out / CANDIDATES_FILE).read_text())
    assert record["chosen"] == searched["chosen"].name
    assert {c["name"]: c["validation_value"] for c in record["candidates"]} == {
        c.name: c.validation_value for c in found}
    # each candidate's validation value is the threshold rule's on its out-of-fold predictions
    for c in found:
        if c.kind != "ensemble":
            assert c.validation_value == pytest.approx(choose_thresholds(c.val_labels, c.val_probs, METRIC).value)
    assert len({c.val_labels.shape for c in found}) == 1


def test_the_ensemble_of_the_candidates_predicts_what_its_figures_came_from(searched, monkeypatch):
    """Whatever greedy selection keeps on this data, an ensemble of every member must load and predict
    the probabilities its metrics were computed from."""
    members = [c for c in searched["found"] if c.kind != "ensemble"]
    monkeypatch.setattr(ensemble, "greedy", lambda y, probs, metric, **_: (np.arange(1, len(probs) + 1), 0.0))
    info = candidates_module.folder_info(members[0].folder)
    mixed = candidates_module.ensemble_candidate(members, searched["corpus"], info, METRIC,
                                                 searched["folder"] / "forced")
    out = searched["folder"] / "delivered-ensemble"
    assert deliver([mixed], METRIC, out) is mixed
    assert json.loads((out / "weights.json").read_text())["members"][0]["count"] == 1
    check_predictions(out, mixed, searched["corpus"])


def test_a_delivered_baseline_predicts_what_its_figures_came_from(searched):
    base = next(c for c in searched["found"] if c.kind == "baseline")
    out = searched["folder"] / "delivered-baseline"
    deliver([base], METRIC, out)
    check_predictions(out, base, searched["corpus"])


def test_the_delivered_folder_predicts_what_its_figures_came_from(searched):
    check_predictions(searched["out"], searched["chosen"], searched["corpus"])
    for candidate in searched["found"]:
        check_predictions(candidate.folder, candidate, searched["corpus"])


def check_predictions(folder, candidate, corpus) -> None:
    """``predict``'s loader on ``folder`` gives the candidate's test probabilities (to 1e-6), and its
    metrics.json test figures are those of its predictions at the saved thresholds."""
    loaded = predict.load(folder)
    texts = [corpus.texts[i] for i in corpus.test_idx]
    y_pred, probs = loaded.predict(texts, cleaned=True)
    np.testing.assert_allclose(probs, candidate.test_probs, atol=1e-6, rtol=0)
    figures = json.loads((folder / "metrics.json").read_text())
    expected = summary(corpus.labels[corpus.test_idx], y_pred)
    assert figures["test_hamming_loss"] == pytest.approx(expected["hamming_loss"])
    assert figures["test_micro_f1"] == pytest.approx(expected["micro_f1"])


def test_predict_command_and_compare_read_the_new_kinds(searched, capsys):
    base = next(c for c in searched["found"] if c.kind == "baseline")
    assert main(["predict", str(base.folder), "--json", "How do I hide a div with jquery?"]) == 0
    post = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(post["scores"]) == set(searched["corpus"].tag_names)
    table = compare.compare_table([c.folder for c in searched["found"]], baselines=False)
    (metric, rows), = table.groups
    assert [r.name for r in rows] == [c.name for c in searched["found"]]
    assert compare.winner(rows, metric).name == searched["chosen"].name


def test_a_tampered_ensemble_member_is_refused(searched, tmp_path, monkeypatch):
    import shutil

    members = [c for c in searched["found"] if c.kind != "ensemble"]
    monkeypatch.setattr(ensemble, "greedy", lambda y, probs, metric, **_: (np.ones(len(probs), int), 0.0))
    info = candidates_module.folder_info(members[0].folder)
    mixed = candidates_module.ensemble_candidate(members, searched["corpus"], info, METRIC, tmp_path / "c")
    copy = shutil.copytree(mixed.folder, tmp_path / "copy")
    config = copy / "members" / "baseline-tfidf" / "config.json"
    config.write_text(config.read_text().replace('"C"', '"C" ', 1))
    with pytest.raises(UserError, match="does not match the sha256"):
        predict.load(copy)
    config.write_text(config.read_text().replace('"C" ', '"C"', 1))
    predict.load(copy)  # as it was: loads
    # a member name that is a path is refused, even with its sha256 recorded
    weights = copy / "weights.json"
    weights.write_text(weights.read_text().replace('"baseline-tfidf"', '"../baseline-tfidf"'))
    record = json.loads((copy / "config.json").read_text())
    record["sha256"]["weights.json"] = sha256(weights)
    (copy / "config.json").write_text(json.dumps(record))
    results_folder.write_manifest(copy)  # the whole folder consistent again: only the name is wrong
    with pytest.raises(UserError, match="expected a name of letters"):
        predict.load(copy)
