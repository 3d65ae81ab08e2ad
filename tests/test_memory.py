"""Memory as a budget: the estimate of a trial's tensors against what a real training step
allocates, the worker's share, and the objective pruning (not failing) a trial that would not fit."""

import optuna
import pytest
import torch

from tagsearch.errors import UserError
from tagsearch.learn import train
from tagsearch.learn.models import build_model
from tagsearch.study import memory
from tagsearch.study.spec import SEED_DEFAULTS

N_TAGS = 7


def allocated_bytes(model: torch.nn.Module, optimizers: list) -> int:
    """Bytes of every distinct tensor storage the model, its gradients and its optimizers hold."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def one_step(params: dict, input_size: int, input_kind: str) -> int:
    """Build the model ``params`` makes, take one optimizer step on a tiny batch, count its bytes."""
    model = build_model(params, input_size, N_TAGS, input_kind)
    optimizers = train.make_optimizers(model, params)
    generator = torch.Generator().manual_seed(0)
    if input_kind == "bags":
        ids = torch.randint(0, input_size, (12,), generator=generator)
        batch = (ids, torch.tensor([0, 3, 6, 9]), torch.full((12,), 0.25))
    elif input_kind == "sparse":
        dense = (torch.rand(4, input_size, generator=generator) > 0.9).float()
        batch = dense.to_sparse_csr()
    else:
        batch = torch.rand(4, input_size, generator=generator)
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), torch.ones(4, N_TAGS))
    loss.backward()
    for opt in optimizers:
        opt.step()
    return allocated_bytes(model, optimizers)


@pytest.mark.parametrize("model, input_size, input_kind, extra", [
    ("tfidf", 3000, "sparse", {"hidden_layers": 1, "hidden1": 256, "optimizer": "adamw"}),
    ("tfidf", 3000, "sparse", {"hidden_layers": 0, "optimizer": "sgd"}),
    ("encoder_tfidf", 2500, "sparse", {"hidden_layers": 2, "hidden1": 128, "hidden2": 32, "optimizer": "sgd"}),
    ("dense", 5000, "bags", {"hidden_layers": 2, "embedding_dim": 96, "optimizer": "adamw"}),
    ("encoder", 384, "dense", {"hidden_layers": 1, "hidden1": 512, "optimizer": "adamw"}),
])
def test_the_estimate_matches_what_a_training_step_allocates(model, input_size, input_kind, extra):
    params = {**SEED_DEFAULTS, "model": model, **extra}
    measured = one_step(params, input_size, input_kind)
    estimate = memory.trial_bytes(params, input_size, N_TAGS)
    assert estimate == pytest.approx(measured, rel=0.02)
    assert memory.trial_bytes(params, input_size, N_TAGS, folds=3) == 3 * estimate


def test_a_kept_copy_of_the_best_weights_costs_one_more_model():
    params = {**SEED_DEFAULTS, "model": "tfidf", "hidden_layers": 1, "hidden1": 64, "optimizer": "adamw"}
    sparse, dense, buffers = memory.parameter_counts(params, 1000, N_TAGS)
    assert (memory.trial_bytes(params, 1000, N_TAGS, keep_best=True) - memory.trial_bytes(params, 1000, N_TAGS)
            == 4 * (sparse + dense + buffers))


def test_the_largest_first_layers_of_the_space_are_gigabytes():
    """The reason for the budget: 100,000 TF-IDF features × 1,024 units with Adam, 3 folds."""
    params = {**SEED_DEFAULTS, "model": "tfidf", "hidden_layers": 1, "hidden1": 1024, "optimizer": "adamw"}
    assert memory.trial_bytes(params, 100_000, 10, folds=3) > 3 * memory.GIB


def test_the_worker_share_splits_the_machine_and_is_capped():
    assert memory.worker_share(2, total=4 * memory.GIB) == int(4 * memory.GIB * 0.8 / 2)
    assert memory.worker_share(2, total=64 * memory.GIB) == memory.WORKER_CAP
    assert memory.workers_fitting(16, total=4 * memory.GIB) == 3
    assert memory.workers_fitting(2, total=64 * memory.GIB) == 2
    assert memory.workers_fitting(8, total=memory.GIB // 2) == 1


@pytest.mark.parametrize("text, expected", [("2G", 2 * memory.GIB), ("1500M", 1500 * 1024**2),
                                            ("2.5GB", int(2.5 * memory.GIB)), ("3221225472", 3 * memory.GIB)])
def test_memory_sizes_parse(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["2X", "lots", "", "100M", "-1G"])
def test_bad_memory_sizes_name_the_value(text):
    with pytest.raises(UserError, match="--memory"):
        memory.parse_memory(text)


def test_a_trial_that_would_not_fit_is_pruned_before_it_allocates(spec_factory):
    """The objective prunes (does not fail) the configuration whose models would exceed --memory,
    and records why; a small one under the same limit runs."""
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.objective import Objective
    from tagsearch.study.spec import load_spec

    spec = load_spec(spec_factory("tfidf", extra="[search.hidden1]\nlow = 8\nhigh = 200000\nlog = true\n"))
    corpus = load_corpus(spec.data_config())
    objective = Objective(spec, corpus, device="cpu", memory_limit=memory.resident_bytes() + 64 * 1024**2)
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"hidden1": 100_000})
    study.enqueue_trial({"hidden1": 16})
    study.optimize(objective, n_trials=2)
    big, small = study.trials
    assert big.state == optuna.trial.TrialState.PRUNED
    assert "--memory" in big.user_attrs["pruned_reason"] and big.user_attrs["memory_estimate"] > 64 * 1024**2
    assert small.state == optuna.trial.TrialState.COMPLETE


def test_a_worker_lets_its_feature_cache_go_before_it_prunes_a_trial_that_fits_alone(spec_factory, monkeypatch):
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.objective import Objective
    from tagsearch.study.spec import load_spec

    spec = load_spec(spec_factory("tfidf"))
    objective = Objective(spec, load_corpus(spec.data_config()), device="cpu", memory_limit=10 * memory.GIB)
    held = [10 * memory.GIB - 1]  # the cache holds most of it, until cleared
    monkeypatch.setattr(memory, "resident_bytes", lambda: held[0])
    monkeypatch.setattr(objective.features, "clear", lambda: held.__setitem__(0, memory.GIB))
    study = optuna.create_study(direction="minimize")
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and held[0] == memory.GIB
