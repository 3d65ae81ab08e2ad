"""tagsearch: hyperparameter studies for multi-label StackExchange taggers.

The Python API (api.py; README, "Python API")::

    import tagsearch as ts
    spec = ts.load_spec("studies/tfidf.toml")
    corpus = ts.load_corpus(spec, "posts.csv")        # the spec's [data] without a path
    result = ts.train_one(spec, corpus, epochs=3, lr=3e-3)
    study = ts.run_study(spec, corpus, n_trials=20)   # or join it, from several processes
    folder = ts.retrain_trial(spec, data="posts.csv") # the best trial → results/<study>/
    ts.tag_posts(folder, ["How do I bind a click handler in jQuery?"])
"""

__version__ = "0.1.0"
__all__ = ["load_spec", "load_corpus", "train_one", "run_study", "retrain_trial", "load_results", "tag_posts"]


def __getattr__(name: str):
    """The API, imported on first use: ``tagsearch --version`` must not load torch or optuna."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tagsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
