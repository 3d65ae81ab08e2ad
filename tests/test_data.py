"""Loaders for every layout, tag formats, cleaning, filtering, the seed split and the fingerprint."""

from __future__ import annotations


import joblib
import numpy as np
import pandas as pd
import pytest

from tagsearch.data.corpus import (DataConfig, build_corpus, clean_texts, load_corpus, parse_tags,
                            read_table, seed_split)
from tagsearch.data.builtin import BUILTIN_POSTS
from tagsearch.errors import UserError

POSTS = [
    ("How to bind a click in jQuery?", "<p>I use <code>$(document).ready</code> &amp; click</p>", "javascript jquery"),
    ("C# list sort", "<p>Sort a List&lt;int&gt; in C# on .NET</p>", "c# .net"),
    ("Android intent", "<p>Start an activity with an intent in java.</p>", "java android"),
    ("PHP arrays", "<p>array_merge in php</p>", "php"),
    ("C++ vectors", "<pre><code>std::vector&lt;int&gt; v;</code></pre>", "c++"),
    ("Python lists", "<p>list comprehension</p>", "python"),
    ("ASP.NET MVC", "<p>Razor views in asp.net</p>", "c# asp.net"),
    ("iPhone view", "<p>UIView in Xcode</p>", "iphone"),
    ("jQuery ajax", "<p>$.ajax posts</p>", "jquery"),
    ("Java streams", "<p>stream().map</p>", "java"),
    ("More js", "<p>closures</p>", "javascript"),
    ("More php", "<p>echo</p>", "php mysql"),
]


def frame(copies: int = 3) -> pd.DataFrame:
    rows = [(f"{t} {k}", b, g) for k in range(copies) for t, b, g in POSTS]
    return pd.DataFrame([{"Id": i + 1, "Title": t, "Body": b, "Tags": g} for i, (t, b, g) in enumerate(rows)])


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_every_table_layout_reads_the_same_corpus(tmp_path, suffix):
    path = tmp_path / f"posts{suffix}"
    df = frame()
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    corpus = build_corpus(read_table(path), DataConfig(path=str(path), top_k=5))
    reference = build_corpus(df, DataConfig(path="x", top_k=5))
    assert corpus.texts == reference.texts
    assert corpus.fingerprint == reference.fingerprint
    assert corpus.tag_names[0] in ("javascript", "jquery", "java", "php", "c#")


def test_kaggle_transfer_layout_uses_title_and_content(tmp_path):
    df = frame().rename(columns={"Id": "id", "Title": "title", "Body": "content", "Tags": "tags"})
    path = tmp_path / "robotics.csv"
    df.to_csv(path, index=False)
    corpus = load_corpus(DataConfig(path=str(path), top_k=3))
    assert corpus.texts[0].startswith("how to bind a click in jquery")


def test_seed_joblib_layout_with_tag_numbers_as_lists_and_strings(tmp_path):
    df = pd.DataFrame({"cleaned_text": [f"post number {i} about code" for i in range(12)],
                       "Tag_Number": [[0, 9], "[3, 5]", [1], "[4]"] * 3})
    path = tmp_path / "stack_posts_ds.joblib"
    joblib.dump(df, path)
    corpus = load_corpus(DataConfig(path=str(path), top_k=6))
    assert set(corpus.tag_names) == {"c#", "asp.net", "javascript", "jquery", "java", "android"}
    assert corpus.labels.sum() == 18


def test_explicit_columns_override_detection(tmp_path):
    df = frame().rename(columns={"Title": "question"})
    df["labels"] = df.pop("Tags").str.replace(" ", ",")
    config = DataConfig(path="x", text_columns=("question",), tags_column="labels", top_k=2)
    corpus = build_corpus(df, config)
    assert len(corpus.tag_names) == 2
    with pytest.raises(UserError, match="text column 'nope' not found"):
        build_corpus(df, DataConfig(path="x", text_columns=("nope",)))


@pytest.mark.parametrize("value, expected", [
    ("c# asp.net", ["c#", "asp.net"]),
    ("c#,asp.net", ["c#", "asp.net"]),
    ("<c#><asp.net>", ["c#", "asp.net"]),
    (["C#", "asp.net"], ["c#", "asp.net"]),
    (np.array(["java"]), ["java"]),
    ("['java', 'android']", ["java", "android"]),
    ("[0, 9]", ["0", "9"]),
    (None, []),
    (float("nan"), []),
    ("", []),
])
def test_tag_formats(value, expected):
    assert parse_tags(value) == expected


def test_cleaning_strips_html_and_keeps_code_tokens():
    [text] = clean_texts(["<p>Use C# &amp; C++ on .NET with $(document).ready() in ASP.NET.</p> <b>Done</b>."])
    tokens = text.split()
    for token in ("c#", "c++", ".net", "$(", "document", "asp.net", "done", "&"[:0] or "use"):
        assert token in tokens
    assert "<p>" not in text and "&amp;" not in text and text == text.lower()


def test_top_k_filter_drops_and_counts_posts_without_a_kept_tag():
    corpus = build_corpus(frame(), DataConfig(path="x", top_k=3))
    assert corpus.labels.shape[1] == 3
    assert corpus.labels.any(axis=1).all()
    assert corpus.dropped_no_tag + len(corpus.texts) == len(frame())


def test_empty_text_posts_are_dropped_with_a_count():
    df = frame()
    df.loc[0, ["Title", "Body"]] = ["", "<p></p>"]
    corpus = build_corpus(df, DataConfig(path="x", top_k=10))
    assert corpus.dropped_empty_text == 1


def test_seed_split_sizes_match_the_notebooks():
    train, val, test = seed_split(BUILTIN_POSTS, 0.2, 0.2, 42)
    assert (len(train), len(val), len(test)) == (30352, 7589, 9486)
    assert len(np.intersect1d(train, test)) == 0 and len(np.intersect1d(train, val)) == 0


def test_split_is_configurable_and_fingerprint_tracks_it():
    a = build_corpus(frame(), DataConfig(path="x", top_k=5))
    b = build_corpus(frame(), DataConfig(path="x", top_k=5, split_seed=7))
    c = build_corpus(frame(), DataConfig(path="x", top_k=5, test_size=0.3))
    assert a.fingerprint != b.fingerprint and a.fingerprint != c.fingerprint
    assert len(c.test_idx) > len(a.test_idx)
    assert a.fingerprint == build_corpus(frame(), DataConfig(path="x", top_k=5)).fingerprint


def test_load_corpus_is_cached_until_the_file_changes(tmp_path):
    path = tmp_path / "p.csv"
    frame().to_csv(path, index=False)
    config = DataConfig(path=str(path), top_k=5)
    assert load_corpus(config) is load_corpus(config)
    df = frame()
    df.loc[0, "Body"] = "changed text here"
    df.to_csv(path, index=False)
    assert load_corpus(config).texts[0] != build_corpus(frame(), config).texts[0]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"Id,Title,Body,Tags\n", "header but no posts"),
    (b"Id,Title,Body,Tags\n1,caf\xe9,b\xe9b\xe9,c#\n", "not valid utf-8"),
    (b"\x00\x01\x02\xff\xfe garbage \x89PNG", "cannot read|not valid utf-8"),
    (b"Id,Foo\n1,bar\n", "no text column"),
    (b"Id,Title,Body\n1,a,b\n", "no tags column"),
    (b"Id,Title,Body,Tags\n1,a,b,\n2,c,d,\n", "empty tag list"),
    (b"Id,Title,Body,Tags\n1,a,b,c#\n", "only 1 post"),
])
def test_bad_files_raise_one_clear_user_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"(?i){message}"):
        load_corpus(DataConfig(path=str(path)))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_corpus(DataConfig(path=str(tmp_path / "nope.csv")))
    path = tmp_path / "posts.xlsx"
    path.write_text("x")
    with pytest.raises(UserError, match="cannot tell the format"):
        read_table(path)


def test_top_k_larger_than_tag_count_is_refused():
    with pytest.raises(UserError, match="top_k=50 is larger"):
        build_corpus(frame(), DataConfig(path="x", top_k=50))


@pytest.mark.parametrize("field, value", [("top_k", 0), ("test_size", 1.5), ("val_size", 0), ("split_seed", "a")])
def test_data_config_validates(field, value):
    with pytest.raises(UserError, match=field):
        DataConfig(path="x", **{field: value})
