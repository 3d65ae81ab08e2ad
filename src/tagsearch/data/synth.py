"""Synthetic StackExchange-like corpus: the project's built-in default data.

The real seed data (a 10-tag subset of Kaggle's "Facebook Recruiting III - Keyword Extraction")
cannot be shipped, so this module generates a stand-in with the same layout (``Id, Title, Body,
Tags``; Body is HTML; Tags are space-separated) and the same label marginals: among 30,352
training posts the seed data had c# 6682, java 5321, php 3701, javascript 17541, android 4875,
jquery 16010, c++ 479, python 351, iphone 192 and asp.net 7963 posts.

How a post is made:

* its tag set is one of a fixed list of plausible patterns (``javascript jquery``,
  ``c# asp.net``, ``java android``, ...), drawn with weights solved by regularised
  non-negative least squares so that the per-tag marginals match the seed data;
* its words (``synth_words``) are drawn, vectorised, from three sources: a shared Zipf-distributed background
  vocabulary (common programming English plus pseudo-words, about a quarter of them (``_TAIL_P``)
  replaced by rare identifiers from an open-ended long tail, so that the vocabulary grows with the
  corpus like real text), the topical words of its own tags
  (including code tokens such as ``$(document).ready``, ``<?php``, ``std::vector``), and the
  topical words of one "distractor" tag it does NOT have (misleading mentions such as "I tried
  java but ..."); the topical density is Beta-distributed per post, so some posts are hard;
* the Body is HTML: ``<p>`` paragraphs, an optional ``<pre><code>`` block with escaped code
  (``&lt;``, ``&gt;``, ``&amp;``, ``&quot;``), inline ``<code>`` and occasional ``<a href>`` links.

How hard it is (a TF-IDF + logistic-regression baseline's Hamming loss), how many distinct
tokens it has and how long writing it takes are measured in BENCHMARKS.md ("The built-in corpus").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from tagsearch.data.synth_words import (SEED_TAGS, _AND, _ASP, _C, _CPP, _IOS, _JAVA, _JQ, _JS, _PHP, _PY,
                                        _Vocabulary, _capitalised)
from tagsearch.errors import UserError

__all__ = ["SEED_TAGS", "SEED_COUNTS", "SEED_N_POSTS", "generate_posts", "write_corpus"]

SEED_COUNTS = (6682, 5321, 3701, 17541, 4875, 16010, 479, 351, 192, 7963)
"""How many of the seed data's training posts carried each tag of :data:`SEED_TAGS`."""

SEED_N_POSTS = 30352
"""Number of training posts the counts in :data:`SEED_COUNTS` were taken over."""

# Tag-set patterns (indices into SEED_TAGS) with prior weights: which combinations are plausible
# and roughly how common. The weights actually used are solved to match the marginals exactly.
_PATTERNS = (
    ((_C,), 3.5), ((_JAVA,), 6.0), ((_PHP,), 4.0), ((_JS,), 5.5), ((_AND,), 6.0),
    ((_JQ,), 1.5), ((_CPP,), 0.6), ((_PY,), 0.5), ((_IOS,), 0.2), ((_ASP,), 2.5),
    ((_JS, _JQ), 30.0), ((_C, _ASP), 8.0), ((_JAVA, _AND), 10.0), ((_PHP, _JS), 2.0),
    ((_PHP, _JQ), 2.0), ((_ASP, _JQ), 3.0), ((_ASP, _JS), 3.0), ((_C, _CPP), 0.4),
    ((_C, _JS), 1.0), ((_C, _JQ), 1.0), ((_JAVA, _JS), 1.5), ((_JAVA, _JQ), 0.8),
    ((_AND, _JS), 0.8), ((_AND, _JQ), 0.4), ((_AND, _IOS), 0.2), ((_JAVA, _CPP), 0.2),
    ((_PY, _CPP), 0.2), ((_PY, _JAVA), 0.1), ((_C, _JAVA), 0.6), ((_AND, _CPP), 0.1),
    ((_PY, _JS), 0.1), ((_IOS, _JS), 0.1),
    ((_PHP, _JS, _JQ), 6.0), ((_ASP, _JS, _JQ), 5.0), ((_C, _JS, _JQ), 2.0),
    ((_C, _ASP, _JQ), 3.0), ((_C, _ASP, _JS), 2.0), ((_JAVA, _JS, _JQ), 1.5),
    ((_AND, _JS, _JQ), 1.0), ((_AND, _IOS, _JS), 0.1), ((_PY, _JS, _JQ), 0.1),
    ((_IOS, _JS, _JQ), 0.1), ((_C, _ASP, _JS, _JQ), 6.0), ((_JAVA, _AND, _JS, _JQ), 0.3),
)

# Text-shape parameters (word counts; Beta shapes of per-post densities).
_TITLE_WORDS = (5, 12)
_PROSE_MEDIAN, _PROSE_SIGMA, _PROSE_MAX = 95.0, 0.75, 700
_CODE_P, _CODE_MEDIAN, _CODE_SIGMA, _CODE_MAX = 0.55, 40.0, 0.7, 300
_BODY_MIN = 12
_TITLE_DENSITY = (1.6, 3.4)
_PROSE_DENSITY = (1.3, 9.0)
_CODE_DENSITY = (1.3, 5.0)
_DISTRACTOR_P = 0.55
_DISTRACTOR_DENSITY = (1.0, 30.0)
_TOPIC_SKEW = 2.0  # rank = floor(L * u**skew): larger -> the first topical words dominate
# Long tail: a share of background words are rare identifiers (names, variables, typos) drawn
# with P(rank >= r) = (1 + r/q)^-(s-1) from an open-ended list, so that the vocabulary keeps
# growing with the corpus as real text does (Heaps' law). Calibrated against the real
# robotics.stackexchange posts (../shared/data): 447k tokens -> 23.0k distinct, growth exponent
# 0.62, which extrapolates to ~125k distinct tokens for 47k posts.
_TAIL_P, _TAIL_S, _TAIL_Q, _TAIL_SUPPORT = 0.27, 1.45, 80.0, 2_000_000
_SENTENCE_END_P, _PARA_END_P = 1.0 / 12.0, 0.3
_INLINE_CODE_P = 0.25
_LINK_P = 0.12
_TITLE_QUESTION_P = 0.35


_CODE_SEPARATORS = (
    "", "", "", "", "(", ");\n", " =", ";\n", ".", " &amp;&amp;", " &lt;", " &gt;", " =&quot;",
    "&quot;", ",", " {\n", "}\n", " ==", "[0]", " +", "();\n", " &lt;/div&gt;\n", ")", "\n",
)


class _BadParameter(UserError, ValueError):
    """A bad generator parameter: both a ValueError and the project's UserError."""


def _check_n_posts(n_posts) -> int:
    """Return ``n_posts`` if it is an int >= 1, else raise a ValueError saying what was expected."""
    if isinstance(n_posts, (bool, np.bool_)) or not isinstance(n_posts, (int, np.integer)) or n_posts < 1:
        raise _BadParameter(f"n_posts must be an integer >= 1, got {n_posts!r}")
    return int(n_posts)


def _pattern_weights() -> np.ndarray:
    """Probabilities of :data:`_PATTERNS` whose tag marginals match :data:`SEED_COUNTS`.

    Solves ``min big^2 ||A W x - m||^2 + ||x - 1||^2`` subject to ``x >= 0`` (stacked NNLS) with
    ``W = diag(w0)`` the prior shape and ``w = W x``: the marginal rows and the sum-to-one row are
    weighted heavily, so the fit is (near) exact, and among the many exact solutions the one with
    the smallest relative changes to the prior is chosen (rare patterns stay rare but present).
    """
    n_pat = len(_PATTERNS)
    incidence = np.zeros((len(SEED_TAGS), n_pat))
    for j, (tags, _) in enumerate(_PATTERNS):
        incidence[list(tags), j] = 1.0
    prior = np.array([w for _, w in _PATTERNS])
    prior /= prior.sum()
    marginals = np.array(SEED_COUNTS) / SEED_N_POSTS
    big = 1000.0
    constraints = np.vstack([incidence / marginals[:, None], np.ones((1, n_pat))]) * prior
    lhs = np.vstack([big * constraints, np.eye(n_pat)])
    rhs = np.concatenate([big * np.ones(len(SEED_TAGS) + 1), np.ones(n_pat)])
    scale, _ = nnls(lhs, rhs)
    weights = prior * scale
    return weights / weights.sum()




def _lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-post word counts of title, prose and code block (0 when the post has no code)."""
    title = rng.integers(_TITLE_WORDS[0], _TITLE_WORDS[1] + 1, n)
    prose = np.clip(rng.lognormal(np.log(_PROSE_MEDIAN), _PROSE_SIGMA, n), _BODY_MIN, _PROSE_MAX)
    code = np.clip(rng.lognormal(np.log(_CODE_MEDIAN), _CODE_SIGMA, n), 3, _CODE_MAX)
    code = np.where(rng.random(n) < _CODE_P, code, 0.0)
    return title, prose.astype(np.int64), code.astype(np.int64)


def _distractors(rng: np.random.Generator, tag_matrix: np.ndarray) -> np.ndarray:
    """One tag per post that the post does NOT carry, drawn proportionally to the seed counts."""
    weights = np.tile(np.asarray(SEED_COUNTS, dtype=float), (tag_matrix.shape[0], 1))
    weights[tag_matrix] = 0.0
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(tag_matrix.shape[0]) * cdf[:, -1]
    return (cdf < u[:, None]).sum(axis=1)


class _PostPlan:
    """Per-post random choices shared by all text segments of the corpus."""

    def __init__(self, rng: np.random.Generator, n: int, weights: np.ndarray) -> None:
        n_pat = len(_PATTERNS)
        pattern_tags = np.full((n_pat, 4), -1)
        for j, (tags, _) in enumerate(_PATTERNS):
            pattern_tags[j, : len(tags)] = tags
        self.pattern = rng.choice(n_pat, size=n, p=weights)
        self.tags = pattern_tags[self.pattern]
        self.n_tags = (self.tags >= 0).sum(axis=1)
        tag_matrix = np.zeros((n, len(SEED_TAGS)), dtype=bool)
        rows = np.repeat(np.arange(n), 4).reshape(n, 4)
        tag_matrix[rows[self.tags >= 0], self.tags[self.tags >= 0]] = True
        self.distractor = _distractors(rng, tag_matrix)
        has_distractor = rng.random(n) < _DISTRACTOR_P
        self.distractor_density = np.where(has_distractor, rng.beta(*_DISTRACTOR_DENSITY, n), 0.0)
        self.density = {
            "title": rng.beta(*_TITLE_DENSITY, n),
            "prose": rng.beta(*_PROSE_DENSITY, n),
            "code": rng.beta(*_CODE_DENSITY, n),
        }


def _sample_words(
    rng: np.random.Generator, vocab: _Vocabulary, plan: _PostPlan, lengths: np.ndarray, segment: str
) -> tuple[np.ndarray, np.ndarray]:
    """Word ids for one segment of every post, concatenated; also a topical-word mask.

    Each word is topical for one of the post's own tags with the post's density, topical for
    its distractor tag with the distractor density, and a Zipf background word otherwise.
    """
    post = np.repeat(np.arange(lengths.size), lengths)
    total = post.size
    u = rng.random(total)
    dens = plan.density[segment][post]
    own = u < dens
    distract = ~own & (u < dens + plan.distractor_density[post])
    which = (rng.random(total) * plan.n_tags[post]).astype(np.int64)
    tag = np.where(distract, plan.distractor[post], plan.tags[post, which])
    rank = (vocab.topic_len[tag] * rng.random(total) ** _TOPIC_SKEW).astype(np.int64)
    topical_id = vocab.topic_start[tag] + rank
    background_id = np.searchsorted(vocab.bg_cdf, rng.random(total) * vocab.bg_cdf[-1])
    background_id = np.minimum(background_id, vocab.n_background - 1)
    tail = rng.random(total) < _TAIL_P
    u_tail = 1.0 - rng.random(int(tail.sum()))  # in (0, 1]
    tail_rank = np.floor(_TAIL_Q * (u_tail ** (-1.0 / (_TAIL_S - 1.0)) - 1.0))
    background_id[tail] = vocab.tail_ids(np.fmod(tail_rank, _TAIL_SUPPORT).astype(np.int64))
    topical = own | distract
    return np.where(topical, topical_id, background_id), topical


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Start offsets (length n+1) of each post's slice in a concatenated segment."""
    return np.concatenate([[0], np.cumsum(lengths)])


def _titles(rng: np.random.Generator, vocab: _Vocabulary, plan: _PostPlan, lengths: np.ndarray) -> list[str]:
    """Plain-text titles: capitalised first word, some ending in a question mark."""
    ids, _ = _sample_words(rng, vocab, plan, lengths, "title")
    words = vocab.plain[ids]
    off = _offsets(lengths)
    words[off[:-1]] = _capitalised(words[off[:-1]])
    last = off[1:] - 1
    words[last] = words[last] + np.where(rng.random(lengths.size) < _TITLE_QUESTION_P, "?", "")
    flat = words.tolist()
    return [" ".join(flat[off[i] : off[i + 1]]) for i in range(lengths.size)]


def _first_true(mask: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Global index of the first True of ``mask`` in each post's slice (each slice has one)."""
    positions = np.flatnonzero(mask)
    return positions[np.searchsorted(positions, off[:-1])]


def _add_links(rng: np.random.Generator, words: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Wrap one random word of a few posts in an ``<a href>`` link (in place; returns ``words``)."""
    n = off.size - 1
    chosen = np.flatnonzero(rng.random(n) < _LINK_P)
    at = off[chosen] + (rng.random(chosen.size) * (off[chosen + 1] - off[chosen])).astype(np.int64)
    question = rng.integers(1000, 15_000_000, chosen.size)
    forum = rng.random(chosen.size) < 0.3
    for j, pos in enumerate(at):
        href = (
            f"http://forums.example.com/showthread.php?t={question[j]}&amp;page=2"
            if forum[j]
            else f"http://stackoverflow.com/questions/{question[j]}"
        )
        words[pos] = f'<a href="{href}" rel="nofollow">{words[pos]}</a>'
    return words


def _prose_tokens(
    rng: np.random.Generator, vocab: _Vocabulary, plan: _PostPlan, lengths: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Rendered prose words with markup attached, and each post's first paragraph end (local index).

    Sentences end with a period and start capitalised; paragraphs are ``<p>...</p>``; some
    topical words are wrapped in inline ``<code>``; a few posts get a link.
    """
    ids, topical = _sample_words(rng, vocab, plan, lengths, "prose")
    total = ids.size
    off = _offsets(lengths)
    is_last = np.zeros(total, dtype=bool)
    is_last[off[1:] - 1] = True
    sent_end = (rng.random(total) < _SENTENCE_END_P) | is_last
    para_end = (sent_end & (rng.random(total) < _PARA_END_P)) | is_last
    starts_sentence = np.concatenate([[True], sent_end[:-1]])
    starts_para = np.concatenate([[True], para_end[:-1]])
    inline = topical & (rng.random(total) < _INLINE_CODE_P)
    words = vocab.html[ids]
    at = np.flatnonzero(starts_sentence & ~inline)
    words[at] = vocab.html_cap[ids[at]]
    at = np.flatnonzero(inline)
    words[at] = "<code>" + words[at] + "</code>"
    words = _add_links(rng, words, off)
    at = np.flatnonzero(starts_para)
    words[at] = "<p>" + words[at]
    at = np.flatnonzero(sent_end & ~para_end)
    words[at] = words[at] + "."
    at = np.flatnonzero(para_end)
    words[at] = words[at] + ".</p>\n"
    first_para_end = _first_true(para_end, off) - off[:-1]
    return words.tolist(), first_para_end


def _code_tokens(
    rng: np.random.Generator, vocab: _Vocabulary, plan: _PostPlan, lengths: np.ndarray
) -> list[str]:
    """Rendered ``<pre><code>`` words: escaped tokens followed by code punctuation."""
    ids, _ = _sample_words(rng, vocab, plan, lengths, "code")
    separators = np.array(_CODE_SEPARATORS, dtype=object)
    words = vocab.html[ids] + separators[rng.integers(0, separators.size, ids.size)]
    off = _offsets(lengths)
    has = lengths > 0
    words[off[:-1][has]] = "<pre><code>" + words[off[:-1][has]]
    words[off[1:][has] - 1] = words[off[1:][has] - 1] + "</code></pre>\n"
    return words.tolist()


def _bodies(
    rng: np.random.Generator, vocab: _Vocabulary, plan: _PostPlan, prose_len: np.ndarray, code_len: np.ndarray
) -> list[str]:
    """HTML bodies: prose paragraphs with the code block (if any) after the first paragraph."""
    prose, first_end = _prose_tokens(rng, vocab, plan, prose_len)
    code = _code_tokens(rng, vocab, plan, code_len)
    poff, coff = _offsets(prose_len).tolist(), _offsets(code_len).tolist()
    cut = (np.asarray(poff[:-1]) + first_end + 1).tolist()
    bodies = []
    for i in range(prose_len.size):
        if coff[i + 1] > coff[i]:
            words = prose[poff[i] : cut[i]] + code[coff[i] : coff[i + 1]] + prose[cut[i] : poff[i + 1]]
        else:
            words = prose[poff[i] : poff[i + 1]]
        bodies.append(" ".join(words))
    return bodies


def _tag_strings(plan: _PostPlan) -> list[str]:
    """Space-separated tag names of each post."""
    names = [" ".join(SEED_TAGS[t] for t in tags) for tags, _ in _PATTERNS]
    return [names[p] for p in plan.pattern.tolist()]


def generate_posts(n_posts: int, seed: int = 0) -> pd.DataFrame:
    """Generate ``n_posts`` synthetic posts as a DataFrame with columns ``Id, Title, Body, Tags``.

    ``Id`` runs from 1; ``Title`` is plain text; ``Body`` is HTML; ``Tags`` holds 1-4
    space-separated names from :data:`SEED_TAGS`. The same ``seed`` gives the same frame.
    """
    n = _check_n_posts(n_posts)
    rng = np.random.default_rng(seed)
    vocab = _Vocabulary()
    plan = _PostPlan(rng, n, _pattern_weights())
    title_len, prose_len, code_len = _lengths(rng, n)
    return pd.DataFrame(
        {
            "Id": np.arange(1, n + 1, dtype=np.int64),
            "Title": _titles(rng, vocab, plan, title_len),
            "Body": _bodies(rng, vocab, plan, prose_len, code_len),
            "Tags": _tag_strings(plan),
        }
    )


def write_corpus(path: str | os.PathLike, n_posts: int, seed: int = 0) -> int:
    """Write :func:`generate_posts` output as CSV to ``path`` (creating parent dirs); return the post count."""
    n = _check_n_posts(n_posts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate_posts(n, seed).to_csv(path, index=False)
    return n

