"""tagsearch's benchmarks: speed against the seed notebooks, the memory-traffic floor, whole studies,
encoders, pruners, storages under load, Ray's overhead, GPU checks. Run from the repository's root:

    python -m benchmarks list              # each benchmark's name and what it measures
    python -m benchmarks run NAME [ARGS]   # one of them with its own options (NAME --help lists them)

Each benchmark is a module of this package with a ``main(argv)``; BENCHMARKS.md has their figures.
What they share with the tests (stub workers, storage timing) is ``tagsearch.testing``."""
