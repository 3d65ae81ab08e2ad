"""``tagsearch predict DIR [TEXT ...] [--file PATH] [--json]``: tag posts with a retrained model.

Posts come from the TEXT arguments, or ``--file`` (a table such as a CSV with a text column, read
like training data; any other file is one post per line), or stdin (one post per line). Each post is
cleaned exactly as the training data was. Output (cli.py prints it): one line per post with its predicted tags
(``-`` when none), or with ``--json`` one JSON object per line: ``{"tags": [...], "scores": {tag:
probability}}``. Loading uses JSON and safetensors only, every file checked against its sha256
(folder.py); ``load`` reads any kind ``tune`` delivers: a network (``folder.load``), a tuned baseline
(``baseline_model.load``) or an ensemble of them (``ensemble.load``), by config.json's ``kind``.
"""

from __future__ import annotations

from pathlib import Path

from tagsearch.results import baseline_model, ensemble
from tagsearch.results import folder as results
from tagsearch.data.corpus import FORMATS, raw_texts, read_table
from tagsearch.errors import UserError

NO_TAG = "-"


KINDS = {"network": results.load, baseline_model.KIND: baseline_model.load, ensemble.KIND: ensemble.load}


def load(folder: str | Path):
    """The model a results folder holds, whatever its kind; each has ``probabilities(texts)``,
    ``predict(texts)``, ``tag_names``, ``thresholds`` and ``config``."""
    kind = results.read_config(folder).get("kind", "network")
    if kind not in KINDS:
        raise UserError(f"results directory {str(folder)!r} holds a model of kind {kind!r}; this tagsearch reads "
                        f"{', '.join(KINDS)}")
    return KINDS[kind](folder)


def tag_posts(loaded, texts: list[str]) -> list[dict]:
    """Per post: its predicted tags (at the saved thresholds) and every tag's probability,
    ``{"tags": [...], "scores": {tag: p}}``. ``loaded``: a results directory or ``load``'s."""
    loaded = load(loaded) if isinstance(loaded, (str, Path)) else loaded
    y_pred, probs = loaded.predict(texts)
    return [{"tags": [tag for tag, hit in zip(loaded.tag_names, row) if hit],
             "scores": {tag: float(p) for tag, p in zip(loaded.tag_names, scores)}}
            for row, scores in zip(y_pred, probs)]


def read_posts(texts: list[str], file: str | None, stdin) -> list[str]:
    """The posts to tag, from arguments, a file, or stdin (in that order of preference)."""
    if texts and file:
        raise UserError("give posts either as TEXT arguments or with --file, not both")
    if texts:
        return list(texts)
    if file:
        posts = read_file(Path(file))
        source = f"--file {file!r}"
    elif stdin is None or stdin.isatty():
        raise UserError("no posts to tag; expected TEXT arguments, --file PATH, or posts piped on stdin")
    else:
        posts = [line.rstrip("\r\n") for line in stdin if line.strip()]
        source = "stdin"
    if not posts:
        raise UserError(f"{source} holds no posts; expected one post per line (or a table with a text column)")
    return posts


def read_file(path: Path) -> list[str]:
    """A table (by extension, read and joined like training data) or plain text, one post per line."""
    if path.suffix.lower() in FORMATS:
        return raw_texts(read_table(path)).tolist()
    if not path.is_file():
        raise UserError(f"--file {str(path)!r} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"--file {str(path)!r} is not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start}); re-save it as UTF-8") from None
    return [line for line in lines if line.strip()]
