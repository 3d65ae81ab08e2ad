"""Turn a ``Corpus`` into model inputs, once, and serve shuffled batches without Python loops.

Every post's tokens are dictionary-encoded once (``token_stream``, in Arrow); both models start
from those integer codes and never tokenise the text again.

Dense model: each post is its *distinct* table rows — vocabulary ids and, with ``word_ngrams`` > 1,
hashed word n-grams (fastText's buckets, rows after the vocabulary) — with weights count/entries,
whose weighted sum is the post's mean embedding; all posts' entries live flat in one tensor with
per-post start/length, so a batch is a contiguous slice of a per-epoch permuted copy and the bag
product gets ``(ids, offsets, weights)`` directly.

TF-IDF model: n-grams of 1..``ngram_max`` codes counted into one posts × n-grams CSR matrix, the
columns kept as ``TfidfVectorizer(min_df, max_features)`` keeps them (fitted on the training
split), weighted by scikit-learn's ``TfidfTransformer``; a batch is a row slice of a per-epoch
permuted copy, handed to torch as a sparse CSR tensor (never densified). At prediction time the
same transform is a ``TfidfVectorizer`` rebuilt from the saved n-grams and idf
(``rebuilt_vectorizer``).

Expensive state is cached per process: the token stream per corpus, the vocabulary per
``min_freq``, the bags per ``(min_freq, word_ngrams, buckets)``, the n-gram counts per
``ngram_max`` and the fitted TF-IDF per its four settings.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from tagsearch.data.corpus import Corpus, give_back_freed_memory

UNKNOWN = "<unk>"
# torch flags sparse CSR as beta on every construction; we only use its stable sparse × dense product.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
# Our sparse tensors are built from validated CSR/COO parts; opting out explicitly (the default
# anyway) stops torch from warning about it in every worker log.
torch.sparse.check_sparse_tensor_invariants.disable()


# ---------------------------------------------------------------------------------------------
# Batching


class BagBatches:
    """One split for the dense model: each post as its distinct token ids with weights count/length
    (a weighted sum of them is the post's mean bag), flat, with per-post entry counts, + labels.

    ``BagBatches(tokens, lengths, labels)`` takes the posts' raw token ids and deduplicates them;
    ``weights`` skips that for ids that are already distinct per post."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor | None = None):
        if weights is None:
            tokens, lengths, weights = (torch.from_numpy(a) for a in dedupe_bags(tokens.numpy(), lengths.numpy()))
        self.tokens, self.lengths, self.weights, self.labels = tokens, lengths, weights, labels
        self.starts = torch.cumsum(lengths, 0) - lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device) -> "BagBatches":
        return BagBatches(self.tokens.to(device), self.lengths.to(device), self.labels.to(device),
                          self.weights.to(device))

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        """Yield ``((ids, offsets, weights), labels)``; ``order`` permutes the posts (one gather per epoch)."""
        tokens, weights, lengths, starts, labels = self.tokens, self.weights, self.lengths, self.starts, self.labels
        if order is not None:
            lengths, labels = lengths[order], labels[order]
            new_starts = torch.cumsum(lengths, 0) - lengths
            entries = permuted_entries(starts[order], new_starts, lengths, len(tokens))
            tokens, weights, starts = tokens[entries], weights[entries], new_starts
        bounds = torch.cat([starts, starts.new_tensor([len(tokens)])]).tolist()
        for lo in range(0, len(lengths), batch_size):
            hi = min(lo + batch_size, len(lengths))
            first, last = bounds[lo], bounds[hi]
            yield (tokens[first:last], starts[lo:hi] - first, weights[first:last]), labels[lo:hi]


def permuted_entries(old_starts: torch.Tensor, new_starts: torch.Tensor, lengths: torch.Tensor,
                     n_entries: int) -> torch.Tensor:
    """Index of each flat entry's source when posts move from ``old_starts`` to ``new_starts``."""
    shift = torch.repeat_interleave(old_starts - new_starts, lengths, output_size=n_entries)
    return shift + torch.arange(n_entries, device=lengths.device)


def bag_counts(tokens: np.ndarray, lengths: np.ndarray, n_ids: int | None = None) -> sp.csr_matrix:
    """Posts × ids matrix of token counts (float32, ids ascending within a post): scipy's C++
    duplicate summing over the flat tokens, O(n) plus one small sort per post."""
    tokens, lengths = np.asarray(tokens, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    n_ids = n_ids or (int(tokens.max()) + 1 if len(tokens) else 1)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    counts = sp.csr_matrix((np.ones(len(tokens), dtype=np.float32), tokens, indptr), shape=(len(lengths), n_ids))
    counts.sum_duplicates()
    return counts


def dedupe_bags(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each post's distinct ids (ascending), the number of them per post, and their weights
    count/length (float32): a weighted sum of a post's distinct ids is its mean bag."""
    return bags_of(bag_counts(tokens, lengths), np.asarray(lengths))


def bags_of(counts: sp.csr_matrix, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entries = np.diff(counts.indptr)
    weights = (counts.data / np.repeat(lengths, entries)).astype(np.float32)
    return counts.indices.astype(np.int64), entries.astype(np.int64), weights


class CsrBatches:
    """One split for the TF-IDF model: a CSR matrix + labels; batches are sparse row slices."""

    def __init__(self, matrix: sp.csr_matrix, labels: torch.Tensor, device="cpu"):
        self.matrix, self.labels, self.device = matrix.astype(np.float32), labels, torch.device(device)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to(self, device) -> "CsrBatches":
        return CsrBatches(self.matrix, self.labels.to(device), device)

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        matrix, labels = self.matrix, self.labels
        if order is not None:
            matrix, labels = matrix[order.cpu().numpy()], labels[order]
        indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.device)
        indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(self.device)
        values = torch.from_numpy(matrix.data).to(self.device)
        bounds = matrix.indptr.tolist()
        n_cols = matrix.shape[1]
        for lo in range(0, matrix.shape[0], batch_size):
            hi = min(lo + batch_size, matrix.shape[0])
            first, last = bounds[lo], bounds[hi]
            rows = torch.sparse_csr_tensor(indptr[lo:hi + 1] - first, indices[first:last], values[first:last],
                                           size=(hi - lo, n_cols), check_invariants=False)
            yield rows, labels[lo:hi]


# ---------------------------------------------------------------------------------------------
# Dense model: token stream and vocabulary


@dataclass
class TokenStream:
    """All posts' tokens as codes into ``uniques`` (one factorize over the whole corpus)."""

    codes: np.ndarray  # int64, concatenated tokens of every post
    lengths: np.ndarray  # int64, tokens per post
    uniques: np.ndarray  # object array of token strings


def per_texts(function, size: int = 2):
    """Cache the last ``size`` results of ``function(corpus, *args)`` by the corpus's texts, not the
    corpus: the fold corpora of a cross-validated study (``data.cv_folds``) share their texts, so
    they share the token stream and the n-gram counts instead of evicting each other's."""
    cache: dict = {}

    @functools.wraps(function)
    def cached(corpus: Corpus, *args):
        key = (id(corpus.texts), args)
        hit = cache.get(key)
        if hit is None or hit[0] is not corpus.texts:  # (an id can be reused once its list is gone)
            while len(cache) >= size:
                cache.pop(next(iter(cache)))
            hit = cache[key] = (corpus.texts, function(corpus, *args))
        return hit[1]

    cached.cache_clear = cache.clear
    return cached


@per_texts
def token_stream(corpus: Corpus) -> TokenStream:
    stream = split_tokens(corpus.texts)
    give_back_freed_memory()  # Arrow's split and dictionary encoding: freed, but kept by its allocator
    return stream


def split_tokens(texts: list[str]) -> TokenStream:
    """Whitespace-separated tokens of every text, dictionary-encoded in first-seen order. Done in
    Arrow's C++ kernels: no Python string object per token (8M tokens: ~0.5 s instead of ~4 s)."""
    lists = pc.ascii_split_whitespace(pa.array(texts, type=pa.large_string()))
    words = pc.list_flatten(lists)
    posts = pc.list_parent_indices(lists).to_numpy()
    nonempty = pc.greater(pc.binary_length(words), 0)  # splitting "" or " a" yields empty strings
    words = words.filter(nonempty)
    posts = posts[nonempty.to_numpy(zero_copy_only=False)]
    encoded = words.dictionary_encode()
    return TokenStream(codes=encoded.indices.to_numpy().astype(np.int64),
                       lengths=np.bincount(posts, minlength=len(texts)).astype(np.int64),
                       uniques=encoded.dictionary.to_numpy(zero_copy_only=False).astype(object))


def _split_token_mask(stream: TokenStream, indices: np.ndarray) -> np.ndarray:
    per_post = np.zeros(len(stream.lengths), dtype=bool)
    per_post[indices] = True
    return np.repeat(per_post, stream.lengths)


@functools.lru_cache(maxsize=8)
def vocabulary(corpus: Corpus, min_freq: int) -> list[str]:
    """Training-split tokens seen at least ``min_freq`` times, most frequent first; id 0 = unknown."""
    stream = token_stream(corpus)
    train_codes = stream.codes[_split_token_mask(stream, corpus.train_idx)]
    counts = np.bincount(train_codes, minlength=len(stream.uniques))
    kept = np.flatnonzero(counts >= min_freq)
    kept = kept[np.lexsort((kept, -counts[kept]))]
    return [UNKNOWN] + stream.uniques[kept].tolist()


def ids_of(uniques: np.ndarray, vocab: list[str]) -> np.ndarray:
    """Vocabulary id of each distinct token string (0 = unknown)."""
    return pd.Index(vocab[1:]).get_indexer(uniques) + 1


def hashed_ngrams(ids: np.ndarray, lengths: np.ndarray, word_ngrams: int, buckets: int):
    """fastText's word n-grams: every run of 2..``word_ngrams`` consecutive known ids within a
    post, hashed into ``buckets``. Returns (post of each n-gram, its bucket)."""
    post = np.repeat(np.arange(len(lengths)), lengths)
    posts, found = [], []
    key = ids.astype(np.uint64)
    for n in range(2, word_ngrams + 1):
        width = len(ids) - n + 1
        if width <= 0:
            break
        valid = (post[n - 1:] == post[:width]) & np.all([ids[k:k + width] > 0 for k in range(n)], axis=0)
        key = key[:width] * np.uint64(1_000_003) + ids[n - 1:].astype(np.uint64)  # wraps: a polynomial hash
        mixed = key ^ (key >> np.uint64(29))
        mixed *= np.uint64(0x9E3779B97F4A7C15)
        posts.append(post[:width][valid])
        found.append((mixed[valid] >> np.uint64(17)) % np.uint64(buckets))
    if not posts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(posts), np.concatenate(found).astype(np.int64)


def bag_arrays(ids: np.ndarray, lengths: np.ndarray, n_vocab: int, word_ngrams: int, buckets: int):
    """Every post's distinct table rows (vocabulary ids, then hashed n-grams at ``n_vocab + bucket``),
    their number per post, and weights count/entries: a weighted sum is the post's mean bag.

    The words' counts are built as CSR straight from the flat ids (already grouped by post, so no
    per-token row array and no COO conversion); hashed n-grams are added as a second matrix."""
    n_rows = n_vocab + (buckets if word_ngrams > 1 else 0)
    counts = bag_counts(ids, lengths, n_rows)
    entries = np.asarray(lengths, dtype=np.int64)
    if word_ngrams > 1:
        gram_posts, gram_buckets = hashed_ngrams(ids, lengths, word_ngrams, buckets)
        grams = sp.csr_matrix((np.ones(len(gram_posts), dtype=np.float32), (gram_posts, gram_buckets + n_vocab)),
                              shape=counts.shape)
        counts = counts + grams
        counts.sum_duplicates()
        entries = entries + np.bincount(gram_posts, minlength=len(lengths))
    return bags_of(counts, np.maximum(entries, 1))


@functools.lru_cache(maxsize=8)
def _bags(corpus: Corpus, min_freq: int, word_ngrams: int, buckets: int):
    stream = token_stream(corpus)
    vocab = vocabulary(corpus, min_freq)
    return bag_arrays(ids_of(stream.uniques, vocab)[stream.codes], stream.lengths, len(vocab), word_ngrams,
                      buckets)


def table_rows(corpus: Corpus, params: dict) -> int:
    """Rows of the dense model's embedding table: the vocabulary, plus the n-gram buckets."""
    extra = params["buckets"] if params.get("word_ngrams", 1) > 1 else 0
    return len(vocabulary(corpus, params["min_freq"])) + extra


def bag_split(corpus: Corpus, params: dict, split: str) -> BagBatches:
    ids, lengths, weights = _bags(corpus, params["min_freq"], params.get("word_ngrams", 1), params["buckets"])
    indices = corpus.split_indices(split)
    in_split = np.zeros(len(lengths), dtype=bool)
    in_split[indices] = True
    entries = np.repeat(in_split, lengths)
    return BagBatches(torch.from_numpy(ids[entries]), torch.from_numpy(lengths[indices]),
                      torch.from_numpy(corpus.labels[indices].astype(np.float32)),
                      torch.from_numpy(weights[entries]))


def encode_texts(texts: list[str], state: dict) -> BagBatches:
    """Encode already-cleaned texts with a saved vocabulary and n-gram settings (prediction time)."""
    stream = split_tokens(texts)
    vocab = state["vocabulary"]
    ids = ids_of(stream.uniques, vocab)[stream.codes]
    bags = bag_arrays(ids, stream.lengths, len(vocab), state.get("word_ngrams", 1), state.get("buckets", 1))
    labels = torch.zeros((len(texts), 0))
    return BagBatches(*(torch.from_numpy(a) for a in bags[:2]), labels, torch.from_numpy(bags[2]))


# ---------------------------------------------------------------------------------------------
# TF-IDF model: n-gram counts from the token stream, then scikit-learn's TfidfTransformer


@per_texts
def ngram_counts(corpus: Corpus, ngram_max: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Posts × n-grams (1..``ngram_max`` tokens) count matrix over every n-gram of the corpus, and
    the n-grams' strings (tokens joined by a space, as scikit-learn's analyzer writes them). Built
    from integer codes of the token stream, so the text is never tokenised again."""
    stream = token_stream(corpus)
    n_codes = np.int64(len(stream.uniques) + 1)
    post = np.repeat(np.arange(len(stream.lengths)), stream.lengths)
    posts, keys, key = [post], [stream.codes], stream.codes.copy()
    for n in range(2, ngram_max + 1):
        width = len(key) - 1
        key = key[:width] * n_codes + stream.codes[n - 1:]
        valid = post[n - 1:] == post[:len(key)]
        posts.append(post[:len(key)][valid])
        keys.append(key[valid] + np.int64(n_codes ** n))  # offset: no collision across orders
    key_all = np.concatenate(keys)
    uniques, columns = np.unique(key_all, return_inverse=True)
    counts = sp.csr_matrix((np.ones(len(key_all), dtype=np.float32), (np.concatenate(posts), columns)),
                           shape=(len(stream.lengths), len(uniques)))
    counts.sum_duplicates()
    return counts, uniques


def ngram_strings(corpus: Corpus, ngram_max: int, columns: np.ndarray) -> list[str]:
    """The strings of the n-gram ``columns`` of ``ngram_counts``."""
    stream, (_, uniques) = token_stream(corpus), ngram_counts(corpus, ngram_max)
    n_codes = np.int64(len(stream.uniques) + 1)
    strings = []
    for key in uniques[columns].tolist():
        order = 1
        while order < ngram_max and key >= n_codes ** (order + 1):
            order += 1
        key -= n_codes ** order if order > 1 else 0
        codes = []
        for _ in range(order):
            key, code = divmod(key, int(n_codes))
            codes.append(code)
        strings.append(" ".join(stream.uniques[c] for c in reversed(codes)))
    return strings


@dataclass
class Tfidf:
    """A fitted TF-IDF representation: the n-gram strings (column order), the fitted
    ``TfidfTransformer`` and the transformed matrix of every post."""

    vocabulary: list[str]
    transformer: TfidfTransformer
    matrix: sp.csr_matrix

    def state(self, settings: dict) -> dict:
        return {"kind": "tfidf", **settings, "norm": "l2", "vocabulary": self.vocabulary,
                "idf": [float(v) for v in self.transformer.idf_]}


def tfidf_settings(params: dict) -> dict:
    return {k: params[k] for k in ("max_features", "min_df", "ngram_max", "sublinear_tf")}


@functools.lru_cache(maxsize=4)
def fitted_tfidf(corpus: Corpus, max_features: int, min_df: int, ngram_max: int, sublinear_tf: bool) -> Tfidf:
    """TF-IDF fitted on the training split as ``TfidfVectorizer(ngram_range=(1, ngram_max),
    min_df, max_features (0 = all), sublinear_tf)`` would fit it: n-grams seen in at least
    ``min_df`` training posts, the ``max_features`` most frequent of them; smoothed idf, unit rows."""
    counts, _ = ngram_counts(corpus, ngram_max)
    train = counts[corpus.train_idx]
    df = np.bincount(train.indices, minlength=counts.shape[1])
    kept = np.flatnonzero(df >= min_df)
    if max_features and len(kept) > max_features:
        frequency = np.asarray(train[:, kept].sum(axis=0)).ravel()
        kept = np.sort(kept[np.argsort(-frequency, kind="stable")[:max_features]])
    counts = counts[:, kept]
    transformer = TfidfTransformer(sublinear_tf=sublinear_tf).fit(counts[corpus.train_idx])
    return Tfidf(ngram_strings(corpus, ngram_max, kept), transformer, transformer.transform(counts).tocsr())


def rebuilt_vectorizer(state: dict) -> TfidfVectorizer:
    """The training-time TF-IDF rebuilt from saved state (``Tfidf.state``), without refitting."""
    vectorizer = TfidfVectorizer(lowercase=False, token_pattern=r"\S+", ngram_range=(1, state["ngram_max"]),
                                 sublinear_tf=state["sublinear_tf"], vocabulary=state["vocabulary"],
                                 dtype=np.float32)
    vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float32)
    return vectorizer


def csr_split(corpus: Corpus, params: dict, split: str) -> CsrBatches:
    matrix = fitted_tfidf(corpus, **tfidf_settings(params)).matrix
    indices = corpus.split_indices(split)
    return CsrBatches(matrix[indices], torch.from_numpy(corpus.labels[indices].astype(np.float32)))


def model_inputs(corpus: Corpus, params: dict, split: str):
    """The batches for ``split`` in the representation ``params['model']`` needs."""
    if params["model"] == "dense":
        return bag_split(corpus, params, split)
    return csr_split(corpus, params, split)


def input_size(corpus: Corpus, params: dict) -> int:
    """Rows of the embedding table (dense) or number of TF-IDF features (tfidf)."""
    if params["model"] == "dense":
        return table_rows(corpus, params)
    return len(fitted_tfidf(corpus, **tfidf_settings(params)).vocabulary)


def preprocessing_state(corpus: Corpus, params: dict) -> dict:
    """What turns cleaned text into model inputs, as JSON-able data (fitted on the training split)."""
    if params["model"] == "dense":
        return {"kind": "dense", "min_freq": params["min_freq"], "word_ngrams": params.get("word_ngrams", 1),
                "buckets": params["buckets"], "vocabulary": vocabulary(corpus, params["min_freq"])}
    return fitted_tfidf(corpus, **tfidf_settings(params)).state(tfidf_settings(params))


def text_inputs(state: dict, texts: list[str]):
    """Batches for already-cleaned ``texts`` in the representation a saved model takes."""
    if state["kind"] == "dense":
        return encode_texts(texts, state)
    return CsrBatches(rebuilt_vectorizer(state).transform(texts).tocsr(), torch.zeros((len(texts), 0)))


def clear_caches() -> None:
    """Forget every cached feature (token streams, vocabularies, bags, n-gram counts, fitted TF-IDF)
    and give their memory back: for a one-off training once its inputs are built."""
    for cached in (token_stream, vocabulary, _bags, ngram_counts, fitted_tfidf):
        cached.cache_clear()
    give_back_freed_memory()
