"""Bad input matrix: every malformed input ends the CLI with exit code 2, exactly one ``error:``
line naming the problem, no traceback, nothing on stdout, and the study storage untouched.

Most cases go through ``tagsearch worker`` pointed (``--storage``) at a copy of a pre-existing
SQLite study whose bytes are hashed before and after; the rest through ``train``, ``predict`` and
``dashboard``. All run in-process through ``tagsearch.cli.main`` (one process pays for torch; the
real console script is tested once, in test_cli.py); any warning raised on the way fails the case,
as it would be noise on a user's terminal. The working directory is checked for stray files too.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import write_spec
from tagsearch.cli import main

STUDY = "existing"


@pytest.fixture(scope="module")
def existing_study(tmp_path_factory, tiny_csv) -> Path:
    """A SQLite file holding study 'existing' (tfidf, one finished trial), written by tagsearch."""
    from tagsearch.study import search
    from tagsearch.study import objective
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.spec import load_spec
    from tagsearch.runtime.trials import run_trials

    folder = tmp_path_factory.mktemp("existing")
    path = folder / "existing.db"
    spec = load_spec(write_spec(folder / "tfidf.toml", model="tfidf", data=tiny_csv, name=STUDY))
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus, f"sqlite:///{path}")
    run_trials(study, objective.Objective(spec, corpus), 1, wait_for_running=False)
    study._storage.engine.dispose() if hasattr(study._storage, "engine") else None
    del study
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, tiny_csv) -> Path:
    """A retrained tfidf results directory (shared with test_retrain/test_predict in one session)."""
    from test_retrain import shared_results

    return shared_results("tfidf", tmp_path_factory, tiny_csv)[1]


@dataclass
class Ctx:
    """What a case may use: its own folder (the working directory), specs, data, storage, results."""

    tmp: Path
    data: Path
    db: Path
    results: Path | None

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.db}"

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def spec(self, model: str = "tfidf", edit: Callable[[dict], None] | None = None, name: str = "spec") -> Path:
        return write_spec(self.tmp / f"{name}.toml", model=model, data=self.data, name=STUDY, edit=edit)

    def worker(self, *extra, spec: Path | None = None, data: Path | None = None, storage: str | None = None) -> list:
        return ["worker", str(spec or self.spec()), "--data", str(data or self.data), "--storage",
                storage or self.storage, "--study-name", STUDY, "--n-trials", "2", *map(str, extra)]


HEADER = "Id,Title,Body,Tags\n"


def rows(n: int, tags: str = "python") -> str:
    return "".join(f"{i},title {i},body text {i},{tags}\n" for i in range(n))


def damaged_results(ctx: Ctx, change: Callable[[Path], None]) -> Path:
    copy = Path(shutil.copytree(ctx.results, ctx.tmp / "results"))
    change(copy)
    return copy


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# (id, argv builder, what the one error line must say)
CASES: list[tuple[str, Callable[[Ctx], list], str]] = [
    # Data files, through `tagsearch worker` on the existing study.
    ("empty-file", lambda c: c.worker(data=c.file("empty.csv", b"")), r"is empty"),
    ("header-only", lambda c: c.worker(data=c.file("header.csv", HEADER)), r"has a header but no posts"),
    ("binary-garbage", lambda c: c.worker(data=c.file("garbage.csv", bytes(range(256)) * 8 + b"\x00\xff\x89PNG")),
     r"not valid utf-8|cannot read"),
    ("latin-1-bytes", lambda c: c.worker(data=c.file("latin1.csv", (HEADER + "1,café crème,naïve body,python\n"
                                                                   + rows(20)).encode("latin-1"))),
     r"is not valid utf-8 \(byte 0xe9"),
    ("missing-text-column", lambda c: c.worker(data=c.file("notext.csv", "Id,Tags\n" + "".join(
        f"{i},python\n" for i in range(20)))), r"no text column found"),
    ("missing-tags-column", lambda c: c.worker(data=c.file("notags.csv", "Id,Title,Body\n" + "".join(
        f"{i},t,b\n" for i in range(20)))), r"no tags column found"),
    ("all-tags-empty", lambda c: c.worker(data=c.file("untagged.csv", HEADER + rows(20, tags=""))),
     r"every post has an empty tag list"),
    ("single-post", lambda c: c.worker(data=c.file("one.csv", HEADER + rows(1))), r"has only 1 post\(s\)"),
    ("unknown-extension", lambda c: c.worker(data=c.file("posts.xlsx", b"PK\x03\x04")), r"cannot tell the format"),
    ("data-not-found", lambda c: c.worker(data=c.tmp / "absent.csv"), r"data file .*absent.csv' not found"),
    # A worker refused for its data must not leave a new, empty storage behind.
    ("new-sqlite-bad-data", lambda c: c.worker(data=c.file("empty.csv", b""), storage=f"sqlite:///{c.tmp}/new/fresh.db"),
     r"is empty"),
    ("new-journal-bad-data", lambda c: c.worker(data=c.file("notags.csv", "Id,Title,Body\n" + "".join(
        f"{i},t,b\n" for i in range(20))), storage=f"journal:///{c.tmp}/new/fresh.log"), r"no tags column found"),
    ("launch-new-sqlite-bad-data", lambda c: ["launch", str(c.spec()), "--data", str(c.file("header.csv", HEADER)),
                                              "--storage", f"sqlite:///{c.tmp}/new/launch.db", "--workers", "2"],
     r"has a header but no posts"),
    ("top-k-too-large", lambda c: c.worker("--top-k", "50"), r"top_k=50 is larger than the number of distinct tags"),
    ("other-data", lambda c: c.worker("--top-k", "5"), r"was created on data with fingerprint"),
    ("other-model", lambda c: c.worker(spec=c.spec("dense")), r"searches the 'tfidf' model"),
    # Study specs.
    ("spec-unknown-key", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw["training"].update(colour=1))),
     r"unknown key 'colour'"),
    ("spec-wrong-type", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw["training"].update(max_epochs="two"))),
     r"max_epochs='two' has the wrong type"),
    ("spec-inverted-range", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw["search"]["dropout"].update(
        low=0.4, high=0.1))), r"inverted range low=0.4 >= high=0.1"),
    ("spec-default-not-a-choice", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw["search"].update(
        hidden1={"choices": [32]}))), r"hidden1=16 is not one of the choices"),
    ("spec-group-without-multivariate", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw["sampler"].update(
        group=True))), r"group = true needs multivariate = true"),
    ("spec-not-toml", lambda c: c.worker(spec=c.file("broken.toml", "[study\nname = ")), r"is not valid TOML"),
    ("spec-missing", lambda c: c.worker(spec=c.tmp / "absent.toml"), r"study spec .* not found"),
    ("spec-unknown-section", lambda c: c.worker(spec=c.spec(edit=lambda raw: raw.update(extras={"a": 1}))),
     r"unknown section \[extras\]"),
    # Storage URLs and settings.
    ("storage-malformed", lambda c: c.worker(storage="storage/tagsearch.db"), r"is not a URL"),
    ("storage-unsupported", lambda c: c.worker(storage="http://127.0.0.1:9/db"), r"unsupported scheme 'http'"),
    ("storage-no-path", lambda c: c.worker(storage="sqlite://relative.db"), r"has no file path"),
    ("storage-unreachable", lambda c: c.worker(storage="postgresql://tagsearch:s3cret@127.0.0.1:1/test"),
     r"cannot open storage 'postgresql://tagsearch:\*\*\*@127.0.0.1:1/test'"),
    ("bad-grace-env", lambda c: ["--env", "TAGSEARCH_GRACE=soon"] + c.worker(),
     r"TAGSEARCH_GRACE='soon' is not a whole number"),
    # Command-line values.
    ("n-trials-zero", lambda c: c.worker("--n-trials", "0"), r"argument --n-trials: 0 is out of range"),
    ("device-unknown", lambda c: c.worker("--device", "tpu"), r"--device 'tpu' is not a device"),
    ("train-param-dropout", lambda c: ["train", str(c.spec()), "--param", "dropout=1.5"],
     r"dropout=1.5 is out of range; expected a number in \[0, 1\)"),
    ("train-param-nan", lambda c: ["train", str(c.spec()), "--param", "lr=nan"], r"lr='nan' is not a number"),
    ("train-param-wrong-model", lambda c: ["train", str(c.spec()), "--param", "embedding_dim=8x"],
     r"embedding_dim='8x' is not an integer"),
    ("train-param-unknown", lambda c: ["train", str(c.spec()), "--param", "colour=red"],
     r"unknown hyperparameter 'colour'"),
    ("train-param-lr-zero", lambda c: ["train", str(c.spec()), "--param", "lr=0"], r"lr=0.0 is out of range"),
    ("train-param-model-unknown", lambda c: ["train", str(c.spec()), "--param", "model=cnn"],
     r"expected one of dense, tfidf"),
    ("train-param-no-equals", lambda c: ["train", str(c.spec()), "--param", "noequals"], r"is not KEY=VALUE"),
    ("train-epochs-zero", lambda c: ["train", str(c.spec()), "--epochs", "0"], r"expected an integer >= 1"),
    ("train-text-column-missing", lambda c: ["train", str(c.spec()), "--text-column", "nope"],
     r"text column 'nope' not found"),
    # Results directories for `tagsearch predict`.
    ("predict-missing-weights", lambda c: ["predict", str(damaged_results(c, lambda d: (d / "model.safetensors").unlink())),
                                           "how do I parse json in python"], r"model.safetensors' is missing"),
    ("predict-tampered-weights", lambda c: ["predict", str(damaged_results(c, lambda d: flip_last_byte(d / "model.safetensors"))),
                                            "hello"], r"does not match the sha256"),
    ("predict-tampered-config", lambda c: ["predict", str(damaged_results(c, lambda d: (d / "config.json").write_text("{"))),
                                           "hello"], r"config.json' is not valid JSON"),
    ("predict-not-a-results-dir", lambda c: ["predict", str(c.tmp), "hello"], r"config file .* is missing"),
    # The dashboard on a storage that does not exist (must not create it).
    ("dashboard-missing-storage", lambda c: ["dashboard", "--storage", f"sqlite:///{c.tmp}/absent.db", "--port", "9"],
     r"storage file .*absent.db.* does not exist"),
]


def digest(db: Path) -> str:
    """sha256 of the SQLite file and of any committed-but-not-checkpointed WAL frames."""
    sha = hashlib.sha256(db.read_bytes())
    wal = db.with_name(db.name + "-wal")
    if wal.is_file():
        sha.update(wal.read_bytes())
    return sha.hexdigest()


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case, build, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, build, message, existing_study, results_dir, tiny_csv, tmp_path, monkeypatch, capsys):
    db = tmp_path / "study.db"
    shutil.copyfile(existing_study, db)
    ctx = Ctx(tmp=tmp_path, data=tiny_csv, db=db, results=results_dir if case.startswith("predict") else None)
    argv = [str(a) for a in build(ctx)]
    if argv[0] == "--env":
        key, _, value = argv[1].partition("=")
        monkeypatch.setenv(key, value)
        argv = argv[2:]
    before, files_before = digest(db), listing(tmp_path)
    monkeypatch.chdir(tmp_path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user's terminal would show (once per place)
        code = main(argv)
    out, err = capsys.readouterr()

    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.search(message, errors[0]), errors[0]
    assert err.strip().splitlines()[-1] == errors[0], f"the error is not the last word on stderr:\n{err}"
    assert not re.search(r"Warning|Exception|^\s+File ", err, re.M), f"noise on stderr:\n{err}"
    assert not caught, f"warnings: {[str(w.message) for w in caught]}"
    assert out == ""
    assert "s3cret" not in err
    assert digest(db) == before, "the study storage changed"
    assert listing(tmp_path) - files_before <= {"study.db-wal", "study.db-shm"}, "stray files were created"


# ---------------------------------------------------------------------------------------------
# Posts whose text is empty after cleaning are dropped and counted, not a crash


def with_empty_posts(tiny_csv: Path, folder: Path) -> Path:
    """The tiny corpus plus 3 tagged posts with no text once HTML is stripped, and 1 with no tag."""
    path = folder / "with-empty.csv"
    extra = ('9001,"","<p></p>",python\n9002,"<b></b>","<br/><hr/>",java\n9003,,"<div> </div>",python\n'
             '9004,"plain words here","and more words",\n')
    path.write_text(tiny_csv.read_text() + extra)
    return path


@pytest.mark.timeout(120)
def test_train_drops_posts_with_empty_text_and_reports_the_count(tiny_csv, tmp_path, capsys):
    data = with_empty_posts(tiny_csv, tmp_path)
    spec = write_spec(tmp_path / "s.toml", model="tfidf", data=data)
    assert main(["train", str(spec), "--epochs", "1", "--json"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"dropped 1 with no kept tag, 3 with empty text", err), err


@pytest.mark.timeout(120)
def test_worker_reports_how_many_posts_it_dropped(tiny_csv, tmp_path, capsys):
    """A worker silently training on fewer posts than the file holds is a surprise: it must say so."""
    data = with_empty_posts(tiny_csv, tmp_path)
    spec = write_spec(tmp_path / "s.toml", model="tfidf", data=data, storage=f"sqlite:///{tmp_path}/w.db")
    assert main(["worker", str(spec), "--n-trials", "1"]) == 0
    err = capsys.readouterr().err
    assert "3 with empty text" in err and "1 with no kept tag" in err, err
