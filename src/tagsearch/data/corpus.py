"""Posts in, clean labelled splits out.

``load_corpus(DataConfig(...))`` reads a file of posts (CSV, TSV, Parquet, JSON Lines, or the seed
notebooks' joblib DataFrame), finds the text and tag columns, cleans the text once, keeps the
``top_k`` most frequent tags, drops posts left with no tag or no text, splits exactly as the seed
notebooks did, and fingerprints the result. Everything downstream (vocabularies, TF-IDF, the
search) works from the returned ``Corpus``; nothing re-reads or re-cleans text.
"""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import functools
import gc
import hashlib
import html
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MultiLabelBinarizer

from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.errors import UserError
from tagsearch.data.synth import SEED_TAGS  # the label ids 0..9 of the seed notebooks' ``Tag_Number`` column

TITLE_COLUMNS = ("Title", "title")
BODY_COLUMNS = ("Body", "body", "content")
TEXT_COLUMNS = ("cleaned_text", "text")
TAG_COLUMNS = ("Tags", "tags")
TAG_ID_COLUMNS = ("Tag_Number",)

FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".joblib": "joblib", ".pkl": "joblib",
}

# A token is ``$(`` (jQuery), or a word that may start with a dot (``.net``) and carry ``#``/``+``
# (``c#``, ``c++``) and inner dots (``asp.net``, ``node.js``); a sentence's final dot is dropped.
TOKEN_PATTERN = r"\$\(|\.?[a-z0-9_][a-z0-9_#+]*(?:\.[a-z0-9_#+]+)*"
_TAG_RE = re.compile(r"<[^>]*>")
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_POST_SEPARATOR = "\x00"
_TAG_ACROSS_POSTS_RE = re.compile(r"<[^>\x00]*>")  # _TAG_RE within one of the NUL-joined posts
MIN_POSTS = 10


@dataclass(frozen=True)
class DataConfig:
    """Where the posts are and how to read and split them (plain data, hashable for caching)."""

    path: str
    text_columns: tuple[str, ...] = ()
    tags_column: str | None = None
    top_k: int = 10
    test_size: float = 0.2
    val_size: float = 0.2
    split_seed: int = 42
    encoding: str = "utf-8"
    # A .joblib/.pkl file is a pickle, which runs code when loaded: read one only when the user
    # named the path (a command's --data, a library call), never a path read from a spec or a
    # results folder. Not part of the data's identity (equality, hash, what retrain records).
    allow_pickle: bool = field(default=True, compare=False)

    def __post_init__(self):
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise UserError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        for name in ("test_size", "val_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise UserError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
        if not isinstance(self.split_seed, int) or isinstance(self.split_seed, bool):
            raise UserError(f"split_seed must be an integer, got {self.split_seed!r}")

    def split_settings(self) -> dict:
        return {"test_size": self.test_size, "val_size": self.val_size, "split_seed": self.split_seed,
                "top_k": self.top_k}


@dataclass(frozen=True)
class DataOptions:
    """What a user may say about the data on top of a spec's ``[data]`` (the commands' ``--data``,
    ``--text-column``, ``--tags-column`` and ``--top-k``); None / empty keeps the spec's."""

    path: str | None = None
    text_columns: tuple[str, ...] = ()
    tags_column: str | None = None
    top_k: int | None = None


def resolve_data(spec, options: DataOptions | None = None) -> DataConfig:
    """The spec's data config with ``options`` applied; generates the built-in corpus if needed."""
    options = options or DataOptions()
    config = spec.data_config(options.path)
    changes = {k: v for k, v in {"text_columns": tuple(options.text_columns) or None,
                                 "tags_column": options.tags_column, "top_k": options.top_k}.items() if v}
    config = dataclasses.replace(config, **changes)
    if Path(config.path) == Path(BUILTIN_PATH):
        ensure_corpus(config.path, BUILTIN_POSTS)
    return config


@dataclass(eq=False)  # hashed by identity: the feature caches key on the corpus object
class Corpus:
    """Cleaned posts (space-joined tokens), a 0/1 label matrix, and the seed-style split."""

    texts: list[str]
    labels: np.ndarray  # (n_posts, n_tags) uint8
    tag_names: list[str]
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    fingerprint: str
    source: str
    dropped_no_tag: int = 0
    dropped_empty_text: int = 0
    split: dict = field(default_factory=dict)

    def split_indices(self, name: str) -> np.ndarray:
        try:
            return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}[name]
        except KeyError:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}") from None

    def summary(self) -> str:
        return (f"{len(self.texts)} posts, {len(self.tag_names)} tags "
                f"(train {len(self.train_idx)} / val {len(self.val_idx)} / test {len(self.test_idx)}); "
                f"dropped {self.dropped_no_tag} with no kept tag, {self.dropped_empty_text} with empty text")


# ---------------------------------------------------------------------------------------------
# Reading


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; "
                        f"expected one of {', '.join(sorted(FORMATS))}")
    return fmt


def read_table(path: str | os.PathLike, encoding: str = "utf-8", allow_pickle: bool = True) -> pd.DataFrame:
    """Read a table of posts; every failure becomes a ``UserError`` naming the file. A joblib/pickle
    file only with ``allow_pickle`` (the user named it: see ``DataConfig.allow_pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} not found")
    if path.stat().st_size == 0:
        raise UserError(f"data file {str(path)!r} is empty; expected a table of posts with text and tags")
    fmt = detect_format(path)
    if fmt == "joblib" and not allow_pickle:
        raise UserError(f"data file {str(path)!r} is a pickle (joblib), which runs code when loaded, and its path "
                        f"was read from a spec or a results folder, not named by you; expected a .csv, .tsv, "
                        f".parquet or .jsonl file, or name this one yourself with --data")
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, encoding=encoding)
        elif fmt == "tsv":
            frame = pd.read_csv(path, sep="\t", encoding=encoding)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            frame = _read_json(path, encoding)
        else:
            frame = _read_joblib(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"data file {str(path)!r} is not valid {encoding} (byte {exc.object[exc.start]:#04x} "
                        f"at offset {exc.start}); re-save it as UTF-8 or pass its encoding") from None
    except UserError:
        raise
    except Exception as exc:  # parser errors of pandas/pyarrow/joblib: report, do not crash
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {str(path)!r} as {fmt}: {first_line}") from None
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{str(path)!r} holds a {type(frame).__name__}, expected a pandas DataFrame of posts")
    if len(frame) == 0:
        raise UserError(f"data file {str(path)!r} has a header but no posts")
    return frame


def _read_json(path: Path, encoding: str) -> pd.DataFrame:
    with open(path, encoding=encoding) as handle:
        first = handle.read(1).lstrip()
    return pd.read_json(path, lines=first != "[", encoding=encoding)


def _read_joblib(path: Path) -> pd.DataFrame:
    import joblib  # a joblib file is a pickle: only ever loaded because the user named it

    return joblib.load(path)


# ---------------------------------------------------------------------------------------------
# Columns, tags and text


def _first_present(frame: pd.DataFrame, names) -> str | None:
    return next((name for name in names if name in frame.columns), None)


def raw_texts(frame: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> pd.Series:
    """Title + body when both exist, else the pre-cleaned text column, else whichever exists."""
    if text_columns:
        missing = [c for c in text_columns if c not in frame.columns]
        if missing:
            raise UserError(f"text column {missing[0]!r} not found; columns are {list(frame.columns)}")
        columns = list(text_columns)
    else:
        title, body = _first_present(frame, TITLE_COLUMNS), _first_present(frame, BODY_COLUMNS)
        text = _first_present(frame, TEXT_COLUMNS)
        if title and body:
            columns = [title, body]
        elif text:
            columns = [text]
        elif title or body:
            columns = [title or body]
        else:
            raise UserError(f"no text column found; expected Title/Body, content, cleaned_text or text "
                            f"(or name one with --text-column), columns are {list(frame.columns)}")
    parts = [frame[c].fillna("").astype(str) for c in columns]
    return functools.reduce(lambda a, b: a + " " + b, parts)


def clean_texts(texts) -> list[str]:
    """Strip HTML tags and entities, lowercase, and tokenise once; returns space-joined tokens.

    Tags, entities and case are done in one pass each over all posts joined by NUL (a tag cannot
    match across it, no entity name contains it, lowercasing is per character) instead of once per
    post; a post that itself contains NUL sends the whole batch down the per-post path."""
    texts = pd.Series(list(texts), dtype=object).fillna("").astype(str).tolist()
    joined = _POST_SEPARATOR.join(texts)
    if not texts or joined.count(_POST_SEPARATOR) != len(texts) - 1:
        return [_clean_one(text) for text in texts]
    posts = html.unescape(_TAG_ACROSS_POSTS_RE.sub(" ", joined)).lower().split(_POST_SEPARATOR)
    return [" ".join(_TOKEN_RE.findall(post)) for post in posts]


def _clean_one(text: str) -> str:
    return " ".join(_TOKEN_RE.findall(html.unescape(_TAG_RE.sub(" ", text)).lower()))


def parse_tags(value) -> list[str]:
    """One post's tags from ``"a b"``, ``"a,b"``, ``"<a><b>"``, a list, or a stringified list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip().lower() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("<"):
        return [t.lower() for t in re.findall(r"<([^<>]+)>", text)]
    if text.startswith("[") and text.endswith("]"):
        try:
            return parse_tags(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            text = text[1:-1]
    separator = "," if "," in text else None
    return [t.strip().lower() for t in text.split(separator) if t.strip()]


def raw_tags(frame: pd.DataFrame, tags_column: str | None = None) -> list[list[str]]:
    column = tags_column or _first_present(frame, TAG_COLUMNS)
    if tags_column and tags_column not in frame.columns:
        raise UserError(f"tags column {tags_column!r} not found; columns are {list(frame.columns)}")
    if column is not None:
        return [parse_tags(v) for v in frame[column].tolist()]
    id_column = _first_present(frame, TAG_ID_COLUMNS)
    if id_column is None:
        raise UserError(f"no tags column found; expected Tags, tags or Tag_Number (or name one with "
                        f"--tags-column), columns are {list(frame.columns)}")
    return [_seed_tag_names(parse_tags(v), id_column) for v in frame[id_column].tolist()]


def _seed_tag_names(ids: list[str], column: str) -> list[str]:
    names = []
    for tag_id in ids:
        if not tag_id.isdigit() or int(tag_id) >= len(SEED_TAGS):
            raise UserError(f"{column} value {tag_id!r} is not a seed label id; expected 0..{len(SEED_TAGS) - 1}")
        names.append(SEED_TAGS[int(tag_id)])
    return names


def top_tags(tag_lists: list[list[str]], top_k: int) -> list[str]:
    counts = Counter(tag for tags in tag_lists for tag in set(tags))
    if not counts:
        raise UserError("every post has an empty tag list; expected at least one tagged post")
    if top_k > len(counts):
        raise UserError(f"top_k={top_k} is larger than the number of distinct tags ({len(counts)}); "
                        f"expected top_k <= {len(counts)}")
    return [tag for tag, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]


def label_matrix(tag_lists: list[list[str]], tag_names: list[str]) -> np.ndarray:
    """(posts, tags) 0/1 matrix, columns in ``tag_names`` order; tags outside it are left out."""
    with warnings.catch_warnings():  # left out on purpose: the tags beyond the top k
        warnings.filterwarnings("ignore", "unknown class", UserWarning)
        return MultiLabelBinarizer(classes=tag_names).fit_transform(tag_lists).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Split and fingerprint


def seed_split(n_posts: int, test_size: float, val_size: float, seed: int):
    """The notebooks' split: test first, then validation out of the remainder, same seed."""
    indices = np.arange(n_posts)
    rest, test = train_test_split(indices, test_size=test_size, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def train_and_val(corpus: Corpus) -> Corpus:
    """``corpus`` with validation folded into training (whatever is fitted on "train" sees both)."""
    return dataclasses.replace(corpus, train_idx=np.sort(np.concatenate([corpus.train_idx, corpus.val_idx])))


# Below this many validation posts one split is too noisy to choose between trials: the search
# cross-validates over training + validation instead (``[training] folds = "auto"``).
AUTO_FOLDS_BELOW = 2000
AUTO_FOLDS = 3


def n_folds(corpus: Corpus, folds: int | str) -> int:
    """``folds`` as a number: ``"auto"`` is 3 when validation has fewer than 2,000 posts, else 1."""
    if folds == "auto":
        return AUTO_FOLDS if len(corpus.val_idx) < AUTO_FOLDS_BELOW else 1
    return int(folds)


def cv_folds(corpus: Corpus, folds: int | str, seed: int | None = None) -> list[Corpus]:
    """The evaluation splits for ``[training] folds`` (``n_folds``): ``[corpus]`` itself for 1; else
    k corpora whose validation posts are one fold of training + validation and whose training posts
    are the others (the test split never moves), shuffled by ``seed`` (default: the split's seed).
    Each fold corpus is a new object, so features are fitted per fold."""
    k = n_folds(corpus, folds)
    seed = corpus.split.get("split_seed", 0) if seed is None else seed
    if k == 1:
        return [corpus]
    from sklearn.model_selection import KFold

    pool = np.sort(np.concatenate([corpus.train_idx, corpus.val_idx]))
    return [dataclasses.replace(corpus, train_idx=pool[fit], val_idx=pool[held])
            for fit, held in KFold(n_splits=k, shuffle=True, random_state=seed).split(pool)]


def fingerprint(texts: list[str], labels: np.ndarray, tag_names: list[str], split: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"tags": tag_names, "split": split}, sort_keys=True).encode())
    digest.update("\x1f".join(texts).encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]


def build_corpus(frame: pd.DataFrame, config: DataConfig) -> Corpus:
    """Columns → clean text → top-k labels → filtered posts → split → fingerprint."""
    texts = clean_texts(raw_texts(frame, config.text_columns))
    tag_lists = raw_tags(frame, config.tags_column)
    if not any(tag_lists):
        raise UserError("every post has an empty tag list; expected at least one tagged post")
    if len(frame) < MIN_POSTS:
        raise UserError(f"{config.path!r} has only {len(frame)} post(s); expected at least {MIN_POSTS} "
                        f"to split into train/validation/test")
    tag_names = top_tags(tag_lists, config.top_k)
    labels = label_matrix(tag_lists, tag_names)
    has_tag = labels.any(axis=1)
    has_text = np.fromiter((bool(t) for t in texts), dtype=bool, count=len(texts))
    keep = np.flatnonzero(has_tag & has_text)
    if len(keep) < MIN_POSTS:
        raise UserError(f"only {len(keep)} post(s) left with text and one of the top {config.top_k} tags; "
                        f"expected at least {MIN_POSTS} to split into train/validation/test")
    texts = [texts[i] for i in keep]
    labels = labels[keep]
    train, val, test = seed_split(len(keep), config.test_size, config.val_size, config.split_seed)
    split = config.split_settings()
    return Corpus(texts=texts, labels=labels, tag_names=tag_names, train_idx=train, val_idx=val,
                  test_idx=test, fingerprint=fingerprint(texts, labels, tag_names, split),
                  source=str(config.path), dropped_no_tag=int((~has_tag).sum()),
                  dropped_empty_text=int((has_tag & ~has_text).sum()), split=split)


def load_corpus(config: DataConfig) -> Corpus:
    """Read + clean + split, cached per process for as long as the file is unchanged."""
    path = Path(config.path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} not found")
    stat = path.stat()
    return _load_cached(config, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_cached(config: DataConfig, _mtime_ns: int, _size: int) -> Corpus:
    corpus = build_corpus(read_table(config.path, config.encoding, config.allow_pickle), config)
    give_back_freed_memory()
    return corpus


def give_back_freed_memory() -> None:
    """Return to the system the memory that reading, cleaning and tokenising freed. pyarrow's
    allocator and glibc's heap keep freed pages for reuse (~340 MB after the 47k corpus), which a
    training process never reuses: its tensors come from torch's allocations (BENCHMARKS.md, Memory)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
