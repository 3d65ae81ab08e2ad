"""tagsearch: hyperparameter studies for multi-label StackExchange taggers."""

__version__ = "0.1.0"
