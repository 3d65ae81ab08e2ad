"""Tests for the synthetic StackExchange-like corpus generator (tagsearch.data.synth)."""

import re
from collections import Counter
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from tagsearch.data.corpus import clean_texts
from tagsearch.data.synth import SEED_TAGS, generate_posts, write_corpus

TARGET_FRACTIONS = {
    "c#": 6682 / 30352, "java": 5321 / 30352, "php": 3701 / 30352, "javascript": 17541 / 30352,
    "android": 4875 / 30352, "jquery": 16010 / 30352, "c++": 479 / 30352, "python": 351 / 30352,
    "iphone": 192 / 30352, "asp.net": 7963 / 30352,
}


@pytest.fixture(scope="module")
def posts() -> pd.DataFrame:
    return generate_posts(5000, seed=7)


def test_columns_dtypes_and_ids(posts):
    assert list(posts.columns) == ["Id", "Title", "Body", "Tags"]
    assert pd.api.types.is_integer_dtype(posts["Id"])
    assert posts["Id"].tolist() == list(range(1, len(posts) + 1))
    for col in ("Title", "Body", "Tags"):
        assert pd.api.types.is_string_dtype(posts[col]) or pd.api.types.is_object_dtype(posts[col])
        assert all(isinstance(v, str) and v for v in posts[col])


def test_tags_nonempty_and_known(posts):
    tag_lists = posts["Tags"].str.split()
    assert (tag_lists.str.len() >= 1).all()
    assert set().union(*map(set, tag_lists)) <= set(SEED_TAGS)
    assert all(len(set(t)) == len(t) for t in tag_lists)


def test_text_lengths_are_realistic(posts):
    title_words = posts["Title"].str.split().str.len()
    body_words = posts["Body"].str.split().str.len()
    assert 5 <= title_words.median() <= 12
    assert 80 <= body_words.median() <= 200
    assert body_words.max() <= 1200


def test_deterministic_per_seed():
    a = generate_posts(300, seed=3)
    b = generate_posts(300, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = generate_posts(300, seed=4)
    assert not a["Body"].equals(c["Body"])
    assert not a["Tags"].equals(c["Tags"])


def test_label_marginals_match_targets(posts):
    tag_lists = posts["Tags"].str.split()
    n = len(posts)
    counts = Counter(t for tags in tag_lists for t in tags)
    for tag, target in TARGET_FRACTIONS.items():
        assert abs(counts[tag] / n - target) < 0.03, (tag, counts[tag] / n, target)
    assert 1.9 < tag_lists.str.len().mean() < 2.25


def test_javascript_jquery_is_most_frequent_pair(posts):
    pairs = Counter(p for tags in posts["Tags"].str.split() for p in combinations(sorted(tags), 2))
    assert pairs.most_common(1)[0][0] == ("javascript", "jquery")
    assert pairs[("asp.net", "c#")] > 0 and pairs[("android", "java")] > 0


def test_body_is_html_with_entities(posts):
    body = posts["Body"]
    assert body.str.startswith("<p>").all()
    assert body.str.contains("</p>", regex=False).all()
    assert body.str.contains("<pre><code>", regex=False).mean() > 0.3
    assert body.str.contains('<a href="', regex=False).any()
    for entity in ("&lt;", "&gt;", "&amp;", "&quot;"):
        assert body.str.contains(entity, regex=False).any(), entity
    # code tokens are escaped in the body but plain in titles
    assert not body.str.contains("<?php", regex=False).any()
    assert body.str.contains("&lt;?php", regex=False).any()


def test_topical_words_follow_tags(posts):
    text = (posts["Title"] + " " + posts["Body"]).str.lower()
    has_php = posts["Tags"].str.split().apply(lambda t: "php" in t)
    pattern = "|".join(re.escape(w) for w in ("$_post", "&lt;?php", "mysql_query", "echo"))
    mentions = text.str.contains(pattern, regex=True)
    assert mentions[has_php].mean() > 2 * mentions[~has_php].mean()
    assert mentions[~has_php].any()  # misleading mentions exist


def test_write_corpus_round_trip(tmp_path):
    path = tmp_path / "nested" / "dir" / "corpus.csv"
    assert write_corpus(path, n_posts=200, seed=5) == 200
    back = pd.read_csv(path)
    expected = generate_posts(200, seed=5)
    assert list(back.columns) == ["Id", "Title", "Body", "Tags"]
    assert back["Id"].tolist() == expected["Id"].tolist()
    for col in ("Title", "Body", "Tags"):
        assert back[col].astype(str).tolist() == expected[col].tolist()


@pytest.mark.parametrize("bad", [0, -3, 2.5, "100", None, True])
def test_write_corpus_rejects_bad_n_posts(tmp_path, bad):
    with pytest.raises(ValueError, match="n_posts"):
        write_corpus(tmp_path / "x.csv", n_posts=bad)
    assert not (tmp_path / "x.csv").exists()


def test_generate_posts_rejects_bad_n_posts():
    with pytest.raises(ValueError, match="got 0"):
        generate_posts(0)


def test_learnable_but_not_separable():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import hamming_loss
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    df = generate_posts(3000, seed=11)
    y = MultiLabelBinarizer(classes=SEED_TAGS).fit_transform(df["Tags"].str.split())
    text = (df["Title"] + " " + df["Body"]).tolist()
    vec = TfidfVectorizer(max_features=5000)
    x_train, x_test = vec.fit_transform(text[:2400]), vec.transform(text[2400:])
    clf = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(x_train, y[:2400])
    loss = hamming_loss(y[2400:], clf.predict(x_test))
    nothing = hamming_loss(y[2400:], np.zeros_like(y[2400:]))
    assert loss < 0.6 * nothing, (loss, nothing)
    assert loss > 0.005, loss


def test_vocabulary_keeps_growing_like_real_text(posts):
    """Heaps' law: real posts keep bringing new tokens (robotics.stackexchange: 2,771 posts, 23k distinct
    tokens, growth exponent 0.62); a closed vocabulary would make the embedding table unrealistically small."""
    texts = clean_texts(posts["Title"] + " " + posts["Body"])
    quarter = Counter(t for text in texts[:1250] for t in text.split())
    whole = Counter(t for text in texts for t in text.split())
    assert 10_000 < len(quarter) and 25_000 < len(whole) < 45_000
    assert len(whole) / len(quarter) > 4 ** 0.5  # 4× the posts: growth exponent above 0.5
    assert sum(count == 1 for count in whole.values()) / len(whole) > 0.5  # mostly hapax legomena, as in real text
