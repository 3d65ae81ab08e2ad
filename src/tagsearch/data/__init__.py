"""Posts in, a ``Corpus`` out: reading the layouts users have (``corpus``), the built-in synthetic
corpus (``builtin``, ``synth``), cleaning, the seed split and the data fingerprint.

Subpackages import nothing on their own: ``import tagsearch.data.builtin`` must stay cheap for the CLI."""
