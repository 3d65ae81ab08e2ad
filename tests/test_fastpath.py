"""The training fast path equals the plain computation it replaces (tiny tensors, fast).

- deduplicated + weighted bags (``features.dedupe_bags``) give the mean bag;
- the per-epoch permuted gather (``BagBatches.batches(order=...)``) equals gathering post by post;
- ``models.BagProduct``'s hand-written gradients equal torch's (sparse rows for the embedding,
  dense for the TF-IDF layer), and ``transpose_csr`` equals scipy's transpose;
- ``train.LazyAdam`` equals ``torch.optim.SparseAdam`` on the touched rows;
- the Arrow tokenizer (``features.split_tokens``) equals ``str.split`` + ``pandas.factorize``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from tagsearch.learn import features
from tagsearch.learn import models
from tagsearch.learn import optimizers
from tagsearch.learn import train


def random_bags(n_posts=7, vocab=11, max_len=9, seed=0):
    """Token ids with repeats, some empty posts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len, n_posts)
    lengths[0] = 0
    tokens = rng.integers(0, vocab, lengths.sum())
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


def post_lists(tokens, lengths):
    bounds = np.concatenate([[0], np.cumsum(lengths.numpy())])
    return [tokens[bounds[i]:bounds[i + 1]].tolist() for i in range(len(lengths))]


# ---------------------------------------------------------------------------------------------
# Batches


def test_dedupe_bags_keeps_distinct_ids_with_count_over_length_weights():
    tokens, lengths = random_bags()
    ids, new_lengths, weights = features.dedupe_bags(tokens.numpy(), lengths.numpy())
    bounds = np.concatenate([[0], np.cumsum(new_lengths)])
    for i, post in enumerate(post_lists(tokens, lengths)):
        got_ids, got_w = ids[bounds[i]:bounds[i + 1]], weights[bounds[i]:bounds[i + 1]]
        distinct, counts = np.unique(post, return_counts=True)
        np.testing.assert_array_equal(got_ids, distinct)
        np.testing.assert_allclose(got_w, counts / max(len(post), 1), rtol=1e-6)
    assert weights.dtype == np.float32


def test_weighted_sum_of_distinct_ids_equals_mean_bag():
    tokens, lengths = random_bags(seed=1)
    table = torch.randn(11, 5)
    offsets = torch.cumsum(lengths, 0) - lengths
    expected = F.embedding_bag(tokens, table, offsets, mode="mean")
    data = features.BagBatches(tokens, lengths, torch.zeros(len(lengths), 2))
    (ids, bag_offsets, weights), _ = next(data.batches(len(lengths)))
    got = F.embedding_bag(ids, table, bag_offsets, mode="sum", per_sample_weights=weights)
    torch.testing.assert_close(got, expected)


def test_permuted_batches_equal_post_by_post_gathering():
    tokens, lengths = random_bags(n_posts=9, seed=2)
    labels = torch.arange(9, dtype=torch.float32)[:, None]
    data = features.BagBatches(tokens, lengths, labels)
    plain = [(ids.tolist(), w.tolist()) for ids, w in per_post(data)]
    order = torch.tensor([3, 0, 8, 5, 1, 7, 2, 6, 4])
    seen = []
    for (ids, offsets, weights), batch_labels in data.batches(4, order):
        ends = torch.cat([offsets[1:], offsets.new_tensor([len(ids)])])
        for start, end, label in zip(offsets.tolist(), ends.tolist(), batch_labels[:, 0].tolist()):
            seen.append((int(label), ids[start:end].tolist(), weights[start:end].tolist()))
    assert [post for post, _, _ in seen] == order.tolist()
    for post, ids, weights in seen:
        assert (ids, weights) == plain[post]


def per_post(data: features.BagBatches):
    for start, length in zip(data.starts.tolist(), data.lengths.tolist()):
        yield data.tokens[start:start + length], data.weights[start:start + length]


def test_bag_counts_equal_a_counter_per_post():
    tokens, lengths = random_bags(seed=4)
    counts = features.bag_counts(tokens.numpy(), lengths.numpy(), 11)
    for i, post in enumerate(post_lists(tokens, lengths)):
        row = counts[i]
        assert dict(zip(row.indices.tolist(), row.data.tolist())) == {t: post.count(t) for t in set(post)}


@pytest.mark.parametrize("max_features, min_df, ngram_max, sublinear_tf",
                         [(0, 1, 1, False), (0, 1, 2, True), (0, 2, 3, False), (3, 1, 1, True), (0, 2, 2, True)])
def test_tfidf_equals_scikit_learn_vectorizer(max_features, min_df, ngram_max, sublinear_tf):
    """n-grams counted from the token stream + TfidfTransformer give TfidfVectorizer's features, idf
    and matrix (columns in another order); max_features=3 cuts where frequencies do not tie."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tagsearch.data.corpus import Corpus

    texts = ["b a b c", "d e a", "f g a b", "c c h", "i a", "j k l b", "a m", "n o c", "", "p a b"]
    corpus = Corpus(texts=texts, labels=np.zeros((10, 1), dtype=np.uint8), tag_names=["t"],
                    train_idx=np.arange(7), val_idx=np.array([7, 8]), test_idx=np.array([9]), fingerprint="x",
                    source="test")
    cache = features.FeatureCache()
    tfidf = features.TfidfFeatures(max_features, min_df, ngram_max, sublinear_tf).fit_corpus(corpus, cache)
    matrix = cache.encoding(tfidf, corpus).matrix
    expected_vectorizer = TfidfVectorizer(lowercase=False, token_pattern=r"\S+", ngram_range=(1, ngram_max),
                                          min_df=min_df, max_features=max_features or None,
                                          sublinear_tf=sublinear_tf, dtype=np.float32).fit(texts[:7])
    names = expected_vectorizer.get_feature_names_out().tolist()
    assert sorted(tfidf.vocabulary_) == names
    order = [tfidf.vocabulary_.index(name) for name in names]
    np.testing.assert_allclose(tfidf.idf_[order], expected_vectorizer.idf_, rtol=1e-7)
    expected = expected_vectorizer.transform(texts).toarray()
    np.testing.assert_allclose(matrix.toarray()[:, order], expected, rtol=1e-6, atol=1e-7)
    assert matrix.dtype == np.float32
    alone = features.TfidfFeatures(max_features, min_df, ngram_max, sublinear_tf).fit(texts[:7])  # sklearn style
    assert sorted(alone.vocabulary_) == names
    np.testing.assert_allclose(alone.idf_[[alone.vocabulary_.index(n) for n in names]], expected_vectorizer.idf_,
                               rtol=1e-7)


def test_hashed_word_ngrams_skip_unknown_ids_and_stay_within_posts():
    ids = np.array([1, 2, 3, 0, 4, 5, 6], dtype=np.int64)  # posts [1 2 3] [0 4] [5 6]
    lengths = np.array([3, 2, 2])
    posts, buckets = features.hashed_ngrams(ids, lengths, 3, 97)
    assert posts.tolist() == [0, 0, 2, 0]  # bigrams 1-2, 2-3, 5-6, then trigram 1-2-3; none with id 0
    assert ((0 <= buckets) & (buckets < 97)).all()
    again = features.hashed_ngrams(np.array([9, 1, 2], dtype=np.int64), np.array([3]), 2, 97)[1]
    assert again[1] == buckets[0]  # the same pair hashes to the same bucket wherever it is
    ids_out, counts, weights = features.bag_arrays(ids, lengths, 7, 2, 97)
    assert counts.tolist() == [5, 2, 3]  # 3 tokens + 2 bigrams; 2 tokens; 2 tokens + 1 bigram
    np.testing.assert_allclose(weights[:5].sum(), 1.0, rtol=1e-6)
    assert (ids_out[:3] < 7).all() and (ids_out[3:5] >= 7).all()


def test_cleaning_all_posts_joined_equals_cleaning_each_post():
    from tagsearch.data.corpus import _clean_one, clean_texts

    posts = ["a &amp", "x b", "&notin", "in<b", "c>d</b> Ünï &#65;", None, float("nan"), "> v", "ΑΣ", "İ &lt;p&gt;",
             "<p>$(document).ready c# c++ asp.net. .net</p>", ""]
    expected = [_clean_one("" if p is None or isinstance(p, float) else p) for p in posts]
    assert clean_texts(posts) == expected
    assert clean_texts(posts + ["nul\x00inside <"]) == expected + ["nul inside"]  # the per-post path
    assert clean_texts([]) == []


def test_split_tokens_equals_split_and_factorize():
    texts = ["b a b", "", "c a", "a", "d  e", " f"]
    stream = features.split_tokens(texts)
    words = " ".join(texts).split()
    codes, uniques = pd.factorize(pd.Series(words, dtype=object), sort=False)
    np.testing.assert_array_equal(stream.codes, codes)
    assert stream.uniques.tolist() == list(uniques)
    assert stream.lengths.tolist() == [len(t.split()) for t in texts]


# ---------------------------------------------------------------------------------------------
# Gradients


def test_transpose_csr_equals_scipy_transpose():
    matrix = sp.random(6, 9, density=0.3, format="csr", dtype=np.float32, random_state=0)
    crow, col, values = (torch.from_numpy(a.astype(t)) for a, t in
                         ((matrix.indptr, np.int64), (matrix.indices, np.int64), (matrix.data, np.float32)))
    expected = matrix.T.tocsr()
    expected.sort_indices()
    for fast in (True, False):
        if fast:
            t_crow, t_col, t_values = models.transpose_csr(crow, col, values, 9)
        else:  # the device-agnostic path
            saved, models._csr_tocsc = models._csr_tocsc, None
            try:
                t_crow, t_col, t_values = models.transpose_csr(crow, col, values, 9)
            finally:
                models._csr_tocsc = saved
        got = sp.csr_matrix((t_values.numpy(), t_col.numpy(), t_crow.numpy()), shape=(9, 6))
        np.testing.assert_array_equal(got.indptr, expected.indptr)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.data, expected.data)


def test_embedding_gradient_equals_torch_sparse_gradient_coalesced():
    tokens, lengths = random_bags(seed=3)
    offsets = torch.cumsum(lengths, 0) - lengths
    grad_out = torch.randn(len(lengths), 5)
    reference = torch.nn.EmbeddingBag(11, 5, mode="mean", sparse=True)
    reference(tokens, offsets).backward(grad_out)
    expected = reference.weight.grad.coalesce()

    ours = torch.nn.EmbeddingBag(11, 5, mode="mean", sparse=True)
    ours.weight.data.copy_(reference.weight.data)
    data = features.BagBatches(tokens, lengths, torch.zeros(len(lengths), 1))
    (ids, bag_offsets, weights), _ = next(data.batches(len(lengths)))
    models.bag_product(ours.weight, ids, bag_offsets, weights, sparse_grad=True).backward(grad_out)
    got = train.coalesced(ours.weight.grad)
    assert got.is_sparse and got.is_coalesced()
    np.testing.assert_array_equal(got.indices(), expected.indices())
    torch.testing.assert_close(got.values(), expected.values())
    assert len(got.indices()[0]) == len(torch.unique(tokens))  # only the touched rows


def test_sparse_linear_equals_dense_linear_forward_and_gradients():
    matrix = sp.random(5, 8, density=0.4, format="csr", dtype=np.float32, random_state=1)
    rows = torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                   torch.from_numpy(matrix.indices.astype(np.int64)), torch.from_numpy(matrix.data),
                                   size=matrix.shape, check_invariants=True)
    torch.manual_seed(0)
    layer = models.SparseLinear(8, 3)
    torch.manual_seed(0)
    dense = torch.nn.Linear(8, 3)
    torch.testing.assert_close(layer.weight.detach(), dense.weight.detach().t())  # same initialisation
    grad_out = torch.randn(5, 3)
    layer(rows).backward(grad_out)
    dense(torch.from_numpy(matrix.toarray())).backward(grad_out)
    torch.testing.assert_close(layer(rows), dense(torch.from_numpy(matrix.toarray())))
    grad = train.coalesced(layer.weight.grad)  # autograd drops the flag; rows already ascend
    assert grad.is_sparse and grad.is_coalesced()  # only the rows of the features present, for lazy Adam
    assert sorted(grad.indices()[0].tolist()) == sorted(set(matrix.indices.tolist()))
    torch.testing.assert_close(grad.to_dense(), dense.weight.grad.t())
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad)
    with torch.inference_mode():
        torch.testing.assert_close(layer(rows), dense(torch.from_numpy(matrix.toarray())))


# ---------------------------------------------------------------------------------------------
# Optimizer


@pytest.mark.parametrize("in_place", [True, False], ids=["cpu-kernel", "gathered"])
@pytest.mark.parametrize("steps, n_touched", [(1, 4), (4, 4), (6, None)])
def test_lazy_adam_equals_sparse_adam(steps, n_touched, in_place, monkeypatch):
    """cpu-kernel: the compiled in-place loop; gathered: the path CUDA takes (scratch buffers and
    torch's fused Adam), forced here on the CPU. None: 2 to 8 rows a step, so the scratch buffers
    are reused and grown."""
    monkeypatch.setattr(optimizers, "in_place_kernel", lambda param: in_place)
    torch.manual_seed(0)
    start = torch.randn(10, 4)
    ours, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    lazy, sparse_adam = train.LazyAdam([ours], lr=0.01), torch.optim.SparseAdam([reference], lr=0.01)
    rng = np.random.default_rng(0)
    for step in range(steps):
        n_rows = n_touched or [2, 8, 3, 8, 5, 2][step]
        rows = torch.from_numpy(np.sort(rng.choice(10, n_rows, replace=False)))
        values = torch.randn(n_rows, 4)
        # ours gets it flagged-coalesced as BagProduct builds it; SparseAdam an uncoalesced duplicate split
        ours.grad = torch.sparse_coo_tensor(rows[None], values, (10, 4), is_coalesced=True, check_invariants=True)
        reference.grad = torch.sparse_coo_tensor(torch.cat([rows, rows])[None], torch.cat([values / 2, values / 2]),
                                                 (10, 4), check_invariants=True)
        lazy.step()
        sparse_adam.step()
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[torch.unique(torch.nonzero(ours.detach() != start)[:, 0])] = False
    torch.testing.assert_close(ours.detach()[untouched], start[untouched])  # lazy: untouched rows never move


@pytest.mark.parametrize("in_place", [True, False], ids=["cpu-kernel", "gathered"])
def test_lazy_sgd_equals_torch_sgd_on_the_rows_each_step_touches(in_place, monkeypatch):
    """Rows touched every step move exactly as under torch's SGD (momentum, weight decay); rows
    never touched do not move, although torch's dense weight decay would shrink them."""
    monkeypatch.setattr(optimizers, "in_place_kernel", lambda param: in_place)
    torch.manual_seed(0)
    start = torch.randn(10, 4)
    ours, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    lazy = train.LazySGD([ours], lr=0.5, momentum=0.9, weight_decay=0.1)
    sgd = torch.optim.SGD([reference], lr=0.5, momentum=0.9, weight_decay=0.1)
    rows = torch.tensor([1, 4, 6])
    for _ in range(5):
        values = torch.randn(3, 4)
        ours.grad = torch.sparse_coo_tensor(rows[None], values, (10, 4), is_coalesced=True)
        reference.grad = torch.zeros(10, 4).index_copy_(0, rows, values)
        lazy.step()
        sgd.step()
    torch.testing.assert_close(ours.detach()[rows], reference.detach()[rows])
    untouched = torch.tensor([0, 2, 3, 5, 7, 8, 9])
    torch.testing.assert_close(ours.detach()[untouched], start[untouched])
    assert not torch.allclose(reference.detach()[untouched], start[untouched])


def test_the_two_thread_kernels_equal_the_serial_ones():
    """``tagsearch train`` alone splits the lazy updates' rows over both cores; same result."""
    from tagsearch.learn import kernels

    rng = np.random.default_rng(0)
    rows, grad = np.sort(rng.choice(500, 200, replace=False)), rng.standard_normal((200, 16)).astype(np.float32)
    tables = rng.standard_normal((3, 500, 16)).astype(np.float32)
    f32 = np.float32
    for threads in (1, 2):
        torch.set_num_threads(threads)  # as training calls them: with torch's thread count (kernels.py)
        adam, sgd = tables.copy(), tables[:2].copy()
        adam[2] = np.abs(adam[2])
        kernels.lazy_adam_rows(threads)(adam[0], adam[1], adam[2], rows, grad, f32(0.01), f32(0.9),
                                        f32(0.999), f32(1e-8), f32(0.999))
        kernels.lazy_sgd_rows(threads)(sgd[0], sgd[1], rows, grad, f32(0.1), f32(0.9), f32(1e-4))
        if threads == 1:
            serial = adam, sgd
    torch.set_num_threads(1)  # conftest's setting
    np.testing.assert_array_equal(adam, serial[0])
    np.testing.assert_array_equal(sgd, serial[1])


def test_coalesced_flags_sorted_rows_without_sorting_and_coalesces_otherwise():
    sorted_grad = torch.sparse_coo_tensor(torch.tensor([[1, 4, 6]]), torch.ones(3, 2), (8, 2))
    assert not sorted_grad.is_coalesced() and train.coalesced(sorted_grad).is_coalesced()
    messy = torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), torch.ones(3, 2), (8, 2))
    fixed = train.coalesced(messy)
    assert fixed.is_coalesced() and fixed.indices().tolist() == [[1, 4]]
    torch.testing.assert_close(fixed.values(), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_sparse_linear_loads_weights_saved_in_nn_linear_layout():
    old = torch.nn.Linear(8, 3)
    layer = models.SparseLinear(8, 3)
    layer.load_state_dict(old.state_dict())
    torch.testing.assert_close(layer.weight.detach(), old.weight.detach().t())


@pytest.mark.parametrize("in_place", [True, False], ids=["cpu-kernel", "gathered"])
def test_lazy_adam_turns_a_nan_gradient_into_nan_rows_without_raising(in_place, monkeypatch):
    """A diverged step must reach the training loop's NaN-loss check, not raise inside the kernel
    (numba's default Python error model raised ZeroDivisionError here)."""
    monkeypatch.setattr(optimizers, "in_place_kernel", lambda param: in_place)
    table = torch.nn.Parameter(torch.zeros(6, 3))
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.tensor([[float("nan")] * 3, [1.0] * 3]),
                                         (6, 3), is_coalesced=True)
    train.LazyAdam([table], lr=0.1).step()
    assert torch.isnan(table.detach()[1]).all() and torch.isfinite(table.detach()[[0, 2, 3, 4, 5]]).all()
