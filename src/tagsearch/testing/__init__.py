"""What the tests and the benchmarks share (as ``optuna.testing`` does for Optuna's): the torch-free
stub workers (``python -m tagsearch.testing.stub_worker``, ``python -m tagsearch.testing.ray_stub_worker``),
the storage-time measurement inside a worker, a loopback TCP relay that cuts connections, the storage
proxy and a free port as processes, and the small study specs. Nothing of the library imports it.

This file imports nothing, so a stub worker started with ``-m`` loads only what it needs."""
