"""``tagsearch demo``: the whole job on a fresh machine (README says how long it takes).

1. Make sure the data exists (the built-in synthetic corpus by default, generated under storage/).
2. Write demo specs under storage/ from studies/dense.toml and studies/tfidf.toml: fewer trials and
   epochs, a median pruner that starts after two trials (so pruning shows), storage
   ``sqlite:///storage/demo.db``.
3. Run both studies as ``tagsearch launch`` does (W worker processes each).
4. Retrain both best trials into results/<study>/ and compare them with the linear baseline.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tagsearch.data.builtin import BUILTIN_DATA, BUILTIN_POSTS, ensure_corpus, synth_path
from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.results.compare import compare
from tagsearch.results.retrain import retrain_trial
from tagsearch.study.spec import load_spec
from tagsearch.study.specfile import save_spec
from tagsearch.study.workers import launch

STORAGE = "sqlite:///storage/demo.db"
SPEC_DIR = Path("storage")
MODELS = ("dense", "tfidf")
EPOCHS = 3
TIMEOUT = 120.0  # seconds per study (no new trial starts after it)
PRUNER = {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0, "patience": 0}


@dataclass
class Demo:
    """What a demo run left: the results directories, the comparison file, and how long it took."""

    folders: list[Path]
    comparison: Path
    seconds: float


def run_demo(*, data: str | None = None, trials: int = 16, timeout: float | None = None, posts: int = BUILTIN_POSTS,
             workers: int = 2) -> Demo:
    """``tagsearch demo``: both studies on ``data`` (default: the built-in corpus of ``posts``
    posts), ``trials`` trials each on ``workers`` worker processes, their best trials retrained,
    and the comparison with the baseline in results/compare.md."""
    start = time.monotonic()
    path, suffix = demo_data(data, posts)
    folders = []
    for model in MODELS:
        name = f"demo-{model}{suffix}"
        spec_path = write_demo_spec(model, name, path, trials)
        log(f"\n== {name}: {trials} trials, {workers} worker(s), at most {EPOCHS} epochs each ==")
        run_study(spec_path, trials, workers, timeout or TIMEOUT)
        log(f"\n== {name}: retraining the best trial and evaluating it on the test split ==")
        folders.append(retrain_trial(spec_path, out=Path("results") / name))
    log("\n== comparing with a TF-IDF + LogisticRegression baseline ==")
    # no encoder baseline: the synthetic corpus is not language a pretrained encoder knows, and
    # encoding its 47k posts would take longer than the whole demo
    comparison = compare(folders, out="results/compare.md", encoder_baseline=False)
    return Demo(folders, comparison, time.monotonic() - start)


def demo_data(path: str | None, posts: int) -> tuple[str, str]:
    """The data path for the demo specs and a study-name suffix ('' for the built-in corpus)."""
    if path:
        if not Path(path).is_file():
            raise UserError(f"--data {path!r} not found; expected a posts file (.csv .tsv .parquet .jsonl)")
        return str(Path(path).resolve()), f"-{Path(path).stem}"
    if posts == BUILTIN_POSTS:
        return BUILTIN_DATA, ""
    target = ensure_corpus(synth_path(posts), posts)
    return target, f"-{posts}"


# ---------------------------------------------------------------------------------------------
# Specs


def studies_dir() -> Path:
    """studies/ in the working directory, else beside the package's source tree."""
    for folder in (Path("studies"), Path(__file__).resolve().parents[2] / "studies"):
        if (folder / "dense.toml").is_file():
            return folder
    raise UserError("cannot find studies/dense.toml; run 'tagsearch demo' from the tagsearch checkout")


def demo_spec(model: str, name: str, data: str, trials: int) -> dict:
    """studies/<model>.toml, shrunk to demo size."""
    raw = tomllib.loads((studies_dir() / f"{model}.toml").read_text(encoding="utf-8"))
    raw["study"].update(name=name, storage=STORAGE, n_trials=trials)
    raw["sampler"]["n_startup_trials"] = max(2, min(raw["sampler"].get("n_startup_trials", 8), trials // 2))
    raw["pruner"] = dict(PRUNER)
    raw["data"]["path"] = data
    raw["training"].update(max_epochs=EPOCHS, device="cpu")
    return raw


def write_demo_spec(model: str, name: str, data: str, trials: int) -> Path:
    path = save_spec(demo_spec(model, name, data, trials), SPEC_DIR / f"{name}.toml",
                     comment=f"Written by 'tagsearch demo' from studies/{model}.toml.")
    load_spec(path)  # the written spec must be valid
    return path


# ---------------------------------------------------------------------------------------------
# Running


def run_study(spec_path: Path, trials: int, workers: int, timeout: float) -> None:
    """``tagsearch launch``: W worker processes and one live progress line."""
    code = launch(str(spec_path), workers=workers, devices="cpu", n_trials=trials, timeout=timeout)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise UserError(f"the study of {spec_path} failed (tagsearch launch exited with {code}); see its "
                        f"messages above and the worker logs in storage/demo-logs/")
