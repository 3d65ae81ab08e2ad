"""``tagsearch demo``: the whole job on a fresh machine, which is ``tagsearch tune`` on the built-in
corpus (README says how long it takes).

1. Make sure the data exists (the built-in synthetic corpus by default, generated under storage/).
2. ``tune`` it: studies/tagger.toml's dense and TF-IDF kinds (the synthetic posts are not language a
   pretrained encoder knows, and encoding 47k posts would take longer than the whole demo) for
   ``DEMO_TIME`` on W CPU workers, in ``sqlite:///storage/demo.db``; the best trial retrained into
   results/demo/, compared with the tuned TF-IDF + logistic regression baseline, and the verdict.
"""

from __future__ import annotations

from pathlib import Path

from tagsearch.data.builtin import BUILTIN_DATA, BUILTIN_POSTS, ensure_corpus, synth_path
from tagsearch.tune import Tuned, tune

STORAGE = "sqlite:///storage/demo.db"
MODELS = ("dense", "tfidf")
DEMO_TIME = 240.0  # seconds of search; then about 30 s of retrain and baseline (3m38s in all with 180 s)


def run_demo(*, time_budget: float = DEMO_TIME, trials: int | None = None, posts: int = BUILTIN_POSTS,
             workers: int = 2) -> Tuned:
    """``tagsearch demo``: ``tune`` on the built-in corpus of ``posts`` posts, ``time_budget``
    seconds of search (and at most ``trials`` finished trials) on ``workers`` CPU worker processes."""
    data, name = demo_data(posts)
    return tune(data, time_budget=time_budget, workers_count=workers, devices="cpu", storage=STORAGE,
                study_name=name, models=MODELS, n_trials=trials, out=Path("results") / name)


def demo_data(posts: int) -> tuple[str, str]:
    """The data for the demo and its study's name: "builtin" / "demo", or a generated corpus of
    ``posts`` posts / "demo-<posts>"."""
    if posts == BUILTIN_POSTS:
        return BUILTIN_DATA, "demo"
    return ensure_corpus(synth_path(posts), posts), f"demo-{posts}"
