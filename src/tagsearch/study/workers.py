"""``tagsearch worker`` and ``tagsearch launch`` as library functions: a spec and its data become a
study and an objective (search.py), which the runtime runs (runtime/trials.py in this process,
runtime/launch.py in W worker processes).

``run_worker``: join (or create) the study and run trials until the study as a whole has its budget
of finished trials, or its deadline came (a time budget records one: runtime/deadline.py).
``launch``: create the study (and its [defaults] trial, and its deadline) here, then start W
``tagsearch worker`` processes on a device list and show one live progress line. Creating a study
happens under the study's budget lock, so of workers starting on a new study at the same moment one
creates it and queues [defaults], the others find it complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import optuna

from tagsearch.data.corpus import DataOptions, load_corpus, resolve_data
from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.runtime import deadline as deadlines
from tagsearch.runtime import launch as runtime_launch
from tagsearch.runtime import ray_launch
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.progress import progress, summary
from tagsearch.runtime.location import Location
from tagsearch.runtime.storage import open_storage
from tagsearch.runtime.worker_storage import outages_of
from tagsearch.runtime.trials import run_trials
from tagsearch.study import memory, search
from tagsearch.study.spec import Spec, load_spec


def run_worker(spec: Spec | str, *, data: DataOptions | None = None, storage: str | None = None,
               study_name: str | None = None, n_trials: int | None = None, timeout: float | None = None,
               device: str | None = None, threads: int | None = None, time_budget: float | None = None,
               memory_limit: int | None = None) -> int:
    """``tagsearch worker``: returns 0, or 1 when this worker's trials kept failing. ``time_budget``:
    seconds for the whole study (default ``[study] time_budget``), recorded as its deadline unless
    it has one. ``memory_limit``: bytes this worker may hold (default ``memory.worker_share(1)``):
    trials that would not fit are pruned before they allocate."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # while loading: SIGTERM acts like Ctrl-C
    spec = as_spec(spec)
    where, target = Location.of(storage or spec.storage), n_trials or spec.n_trials
    url = where.url
    search.check_space(spec)  # cheap checks first, then the data
    from tagsearch.learn import encoder  # here: launch must not load torch
    from tagsearch.study.objective import Objective, describe_device

    encoder.USE_ALL_CORES = False  # the host's other workers go on searching while this one encodes

    device_name = describe_device(device or spec.device)
    store = open_early(where)
    if threads:
        import torch

        torch.set_num_threads(threads)
    corpus = load_corpus(resolve_data(spec, data))
    # one budget lock for the worker's life: creating (or joining) the study, then every trial's count
    with contextlib.closing(BudgetLock(url, study_name or spec.name, outages_of(store))) as lock:
        study = open_study(spec, corpus, url, study_name, lock, seed_offset=runtime_launch.worker_index(),
                           storage=store)
        objective = Objective(spec, corpus, device=device, storage=where,
                              memory_limit=memory_limit or memory.worker_share(1))
        interrupts = Interrupts().install()
        log(f"data: {corpus.source}: {corpus.summary()}")
        log(f"worker {os.getpid()} on study {study.study_name!r} ({where.masked}), device {device_name}, data "
            f"fingerprint {corpus.fingerprint}: {summary(progress(study), target).split(' (')[0]}")
        code = run_trials(study, objective, target, timeout or spec.timeout, lock=lock, interrupts=interrupts,
                          time_budget=time_budget or spec.time_budget)
    log(f"worker {os.getpid()} done: {summary(progress(study), target)}; peak memory "
        f"{memory.describe(memory.peak_resident_bytes())} of its --memory {memory.describe(objective.memory_limit)}")
    return code


def launch(spec: Spec | str, *, data: DataOptions | None = None, storage: str | None = None,
           study_name: str | None = None, workers: int = 1, devices: str = "cpu", n_trials: int | None = None,
           timeout: float | None = None, ray: str | None = None, gpus_per_worker: float | None = None,
           cpus_per_worker: float = 1.0, time_budget: float | None = None, new_session: bool = False,
           memory_limit: int | None = None) -> int:
    """``tagsearch launch``: returns 0, 1 if a worker crashed, 130 if interrupted. ``ray``: place the
    workers on that Ray cluster (``auto``, ``local`` or HOST:PORT; docs/ray.md) instead of here,
    each with ``gpus_per_worker`` GPUs (default: 1 where the cluster has GPUs) and ``cpus_per_worker``.
    ``time_budget``: seconds for the whole study (default ``[study] time_budget``), recorded as its
    deadline here, before any worker starts, unless it has one; the workers read it from the study.
    ``new_session`` (``tagsearch tune``): the budget starts now even on a study that has a deadline
    (``deadline.renew``), and the first Ctrl-C stops the search (``deadline.stop_now``: running
    trials end at their next epoch and count) instead of interrupting the workers; a second one does.
    ``memory_limit``: each worker's ``--memory`` (default: ``memory.worker_share(workers)``)."""
    spec, data = as_spec(spec), data or DataOptions()
    spec_path = spec.path  # what the workers read: the file the spec came from
    memory_limit = memory_limit or memory.worker_share(workers)
    search.check_space(spec)
    where, target = Location.of(storage or spec.storage), n_trials or spec.n_trials
    url = where.url
    # a Ray cluster is checked (reachable, storage reachable from its nodes) before any data is read
    placement = ray_launch.prepare(ray, url, gpus_per_worker, cpus_per_worker) if ray else None
    device_ids = None if placement else parse_devices(devices)
    store = open_early(where)
    config = resolve_data(spec, data)
    corpus = load_corpus(config)
    with contextlib.closing(BudgetLock(url, study_name or spec.name, outages_of(store))) as lock:
        study = open_study(spec, corpus, url, study_name, lock, storage=store)  # trial 0 before any child
        if time_budget or spec.time_budget:
            if new_session:
                deadlines.renew(study, time_budget or spec.time_budget, lock)
            else:
                deadlines.establish(study, time_budget or spec.time_budget, lock)
    log(f"data: {corpus.source}: {corpus.summary()}")

    def command(index: int, device: str, threads: int) -> list[str]:
        # a URL with a password reaches the workers through their environment (STORAGE_ENV), never
        # their argv, which every user of the machine can read (ps, /proc/*/cmdline)
        line = [sys.executable, "-m", "tagsearch.cli", "worker", str(spec_path), "--data", str(config.path),
                *([] if where.has_secret else ["--storage", url]), "--study-name", study.study_name,
                "--n-trials", str(target), "--device", "cpu" if device == "cpu" else "cuda", "--threads", str(threads),
                "--memory", str(memory_limit)]
        for column in data.text_columns:
            line += ["--text-column", column]
        if data.tags_column:
            line += ["--tags-column", data.tags_column]
        if data.top_k:
            line += ["--top-k", str(data.top_k)]
        if timeout:
            line += ["--timeout", str(timeout)]
        return line

    with environment(where.secret_env()):  # the workers inherit it (Ray forwards TAGSEARCH_* variables)
        return start_workers(url, study, target, workers, device_ids, command, placement, new_session)


def start_workers(url, study, target, workers, device_ids, command, placement, new_session) -> int:
    """Start and supervise the workers (here, or on Ray where ``placement`` says)."""
    if placement:
        poll = optuna.load_study(study_name=study.study_name, storage=open_storage(url, read_only=True, retry=True))
        line = runtime_launch.ProgressLine(target)
        return ray_launch.launch_on_ray([command(i, placement.device, placement.threads) for i in range(workers)],
                                        placement=placement, log_dir=runtime_launch.log_dir(url),
                                        log_prefix=f"{study.study_name}-",
                                        show=lambda final: line.show(progress(poll), final=final))

    def stop_search() -> None:
        log("\nstopping the search: no trial starts now, running ones end at their next epoch and count "
            "(Ctrl-C again to stop everything)")
        deadlines.stop_now(study)

    return runtime_launch.launch(url, study.study_name, target, workers, device_ids, command,
                                 soft_stop=stop_search if new_session else None)


def as_spec(spec: Spec | str) -> Spec:
    """``spec``, read from its file when it is a path (a caller in this process passes the value)."""
    return spec if isinstance(spec, Spec) else load_spec(spec)


@contextlib.contextmanager
def environment(variables: dict):
    """``os.environ`` with ``variables`` set while the block runs (the workers started in it inherit them)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_study(spec, corpus, url: str, study_name: str | None, lock: BudgetLock, seed_offset: int = 0,
               storage=None) -> optuna.Study:
    """``search.open_study`` under the study's budget lock (``lock``, which the caller closes): of
    workers starting on a new study at the same moment, one creates it and queues [defaults]; the
    others find it complete (and join it unlocked: that changes nothing). The caller checked the
    spec's space (``search.check_space``); a storage not opened yet is opened under the lock."""
    name = study_name or spec.name
    complete = storage is not None and any(s.study_name == name and "fingerprint" in s.user_attrs
                                           for s in storage.get_all_studies())
    with contextlib.nullcontext() if complete else lock:
        return search.create_or_join(spec, corpus, storage or open_storage(url), study_name, seed_offset)


def open_early(where: Location | str):
    """A server storage, opened before the data is loaded (an unreachable one fails fast); None for
    a local file that does not exist yet, so a refused input never leaves an empty storage behind
    (``open_study`` creates it once the data is good)."""
    where = Location.of(where)
    return open_storage(where, retry=True) if where.file is None or where.file.exists() else None


def parse_devices(text: str) -> list[str]:
    """``"cpu"`` → ``["cpu"]``; ``"0,1"`` → ``["0", "1"]`` (GPU ids, checked against what is visible)."""
    if text.strip().lower() == "cpu":
        return ["cpu"]
    ids = [part.strip() for part in text.split(",")]
    if not ids or not all(part.isdigit() for part in ids):
        raise UserError(f"--devices {text!r} is not a device list; expected 'cpu' or GPU ids like 0,1,2,3")
    import torch

    visible = torch.cuda.device_count()
    missing = [i for i in ids if int(i) >= visible]
    if missing and not visible:
        raise UserError(f"--devices {text!r}: no CUDA GPU is visible on this machine; expected --devices cpu")
    if missing:
        raise UserError(f"--devices {text!r}: GPU {missing[0]} is not visible ({visible} CUDA GPU(s) found); "
                        f"expected ids below {visible}, or --devices cpu")
    return ids
