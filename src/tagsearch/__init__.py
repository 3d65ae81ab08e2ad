"""tagsearch: hyperparameter studies for multi-label StackExchange taggers. The Python API for
notebooks is in api.py (README, "Python API"): the functions the commands call."""

__version__ = "0.1.0"
__all__ = ["load_spec", "load_corpus", "write_corpus", "train_one", "run_study", "retrain_trial", "load_results",
           "read_posts", "tag_posts", "compare", "serve_dashboard", "run_demo"]


def __getattr__(name: str):
    """The API, imported on first use: ``tagsearch --version`` must not load torch or optuna."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tagsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
