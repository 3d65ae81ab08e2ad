"""Shared fixtures: tiny corpora and spec files, built in temp dirs (no shipped data needed)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tagsearch.testing.specs import spec_dict, write_spec  # noqa: F401  (the tests import them from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"

# Two cores: keep each test process on one thread so parallel workers in tests do not thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """torch on one thread in each process that runs tests (set here, not at import: the xdist
    controller, which runs none, then never imports torch)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """``tagsearch worker`` run in-process installs SIGINT/SIGTERM handlers; put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def robotics_csv() -> Path:
    """The real robotics posts from ../shared, or skip with the reason."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"{SHARED_DATA} is absent (the ../shared folder is not beside this checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """600 synthetic posts in the Kaggle layout (Id, Title, Body, Tags)."""
    from tagsearch.data.synth import write_corpus

    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    write_corpus(path, n_posts=600, seed=1)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_csv) -> Path:
    """A 2-layer BERT (hidden 16, no dropout) with a word-level vocabulary of the tiny corpus: the
    finetune kind's model, and an encoder that loads in a second (tests that need any encoder)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tagsearch.data.corpus import DataConfig, load_corpus

    corpus = load_corpus(DataConfig(path=str(tiny_csv)))
    words = sorted({w for text in corpus.texts for w in text.lower().split()})[:400]
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def spec_factory(tmp_path, tiny_csv):
    def make(model="dense", **kwargs):
        kwargs.setdefault("data", tiny_csv)
        return write_spec(tmp_path / f"{model}.toml", model=model, **kwargs)

    return make


class FakeClock:
    """``runtime.deadline.clock`` for tests of the study's deadline: time moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from tagsearch.runtime import deadline

    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    return fake
