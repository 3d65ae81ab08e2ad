"""``tagsearch launch --ray ADDRESS``: the same W workers as a local launch, placed by Ray anywhere
in a cluster. Ray only places and restarts them; each worker is still the ordinary ``tagsearch
worker`` process joining the study through a server storage, so the exact budget, heartbeats,
requeueing and logs behave as in a local launch.

One Ray task per worker (``_run_worker``, on whichever node Ray picks): it starts the worker's
command line as a subprocess in the launching directory, with the GPUs Ray gave the task
(``CUDA_VISIBLE_DEVICES``; none for CPU workers), appends its output to the same per-worker log
file as a local launch (``LOG_DIR/<study>-worker<i>.log``, on the node that runs it), and raises
``WorkerExited`` when the process dies (killed, crashed) so that Ray starts it again, up to
``max_restarts`` times; a lost node is retried the same way by Ray itself. The dead worker's
trial is failed by the heartbeat rule and retried once by whichever worker notices (heartbeat.py).
A worker that refuses its input (exit 2, a user mistake) is not restarted; one that gave up on a
storage outage (exit 2 too, its last line the ``StorageOutage``) is restarted like a lost one.

The driver (``launch_on_ray``) shows the progress line while the tasks run. Ctrl-C/SIGTERM
cancels every task: Ray raises KeyboardInterrupt in it, the task sends SIGTERM to its worker,
which fails and queues its running trial as a local worker does; a second signal, or
``KILL_AFTER_SECONDS`` without an end, cancels with force (the Ray worker exits and its child
gets SIGTERM through PR_SET_PDEATHSIG).

Ray is optional (``pip install 'tagsearch[ray]'``) and imported inside the functions only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from tagsearch.errors import UserError
from tagsearch.log import log, warning
from tagsearch.runtime.children import spawn
from tagsearch.runtime.outages import OUTAGE_MARK
from tagsearch.runtime.location import local_path, masked, scheme

POLL_SECONDS = 1.0
KILL_AFTER_SECONDS = 30
CONNECT_SECONDS = 10
MAX_RESTARTS = 3
TAIL_LINES = 5
FORWARDED_ENV_PREFIX = "TAGSEARCH_"  # heartbeat, grace, outage limit: as set where launch runs
LOOPBACK = ("localhost", "127.0.0.1", "::1", "")
INSTALL_HINT = "pip install 'tagsearch[ray]' (or pip install 'ray>=2.60,<3') on every machine of the cluster"
SERVER_STORAGES = ("postgresql://, mysql://, redis:// (a journal on a Redis server) or grpc://HOST:PORT "
                   "of a 'tagsearch storage-proxy', at an address every node can reach")


class WorkerExited(Exception):
    """Raised in a worker's Ray task when its process died or failed: Ray retries the task."""


class WorkerRefused(Exception):
    """Raised in a worker's Ray task when its process refused its input (exit 2): not retried."""


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Cluster:
    """The Ray cluster this driver is connected to: its alive nodes' resources."""

    address: str
    nodes: list[dict]  # per alive node: {"host": ..., "CPU": n, "GPU": n}

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    @property
    def gpus(self) -> float:
        return sum(node["GPU"] for node in self.nodes)

    def describe(self) -> str:
        cpus = sum(node["CPU"] for node in self.nodes)
        return f"Ray cluster {self.address}: {len(self.nodes)} node(s), {cpus:g} CPU(s), {self.gpus:g} GPU(s)"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> Cluster:
    """``ray.init`` on ``address``: ``auto`` (the cluster this machine belongs to, from ``ray start``
    or RAY_ADDRESS), ``local`` (a single-node Ray started for this run) or ``HOST:PORT`` of a head
    node (checked first: Ray itself retries an unreachable address for minutes)."""
    ray = import_ray()
    import logging

    if address not in ("auto", "local") and "://" not in address:
        probe(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 **({"include_dashboard": False} if address == "local" else {}))
    except Exception as exc:  # ConnectionError (no cluster), ValueError (bad address), ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--ray {address}: cannot connect to a Ray cluster ({type(exc).__name__}: {first_line}); "
                        f"expected 'auto' (after 'ray start' on this machine), 'local', or HOST:PORT of a "
                        f"'ray start --head' node") from None
    nodes = [{"host": node.get("NodeManagerHostname") or node.get("NodeManagerAddress", "?"),
              "CPU": node["Resources"].get("CPU", 0.0), "GPU": node["Resources"].get("GPU", 0.0)}
             for node in ray.nodes() if node.get("Alive")]
    return Cluster(address, nodes)


def probe(address: str) -> None:
    """UserError unless something listens at ``HOST:PORT`` (a Ray head's GCS port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address!r} is not a Ray address; expected 'auto', 'local' or HOST:PORT "
                        f"of a 'ray start --head' node (port 6379 unless --port was given)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise UserError(f"--ray {address}: no Ray head answers there ({exc.strerror or exc}); expected the "
                        f"address 'ray start --head' printed, or 'auto' on a machine of the cluster") from None


def check_storage_for_cluster(url: str, multi_node: bool) -> None:
    """On a cluster of several nodes every worker must reach the storage over the network: a
    SQLite or journal file, or a server named by a loopback address, is refused (one error line
    naming the storages that work). On a single node anything a local launch takes is fine."""
    kind = scheme(url)
    if not multi_node:
        return
    if kind == "sqlite" or local_path(url) is not None:
        raise UserError(f"storage {masked(url)!r} is a file on this machine, which workers on the other nodes of "
                        f"the Ray cluster cannot reach; expected {SERVER_STORAGES}")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if host.lower() in LOOPBACK:
        raise UserError(f"storage {masked(url)!r} names {'a local socket' if not host else host}, which on the other "
                        f"nodes of the Ray cluster means themselves; expected {SERVER_STORAGES}")


def worker_resources(cluster: Cluster, gpus_per_worker: float | None, cpus_per_worker: float) -> tuple[float, float]:
    """(GPUs, CPUs) each worker asks Ray for: ``gpus_per_worker`` (default 1 where the cluster has
    GPUs, else 0: CPU workers), ``cpus_per_worker``. A UserError when no node could ever hold one
    (Ray would wait for such a node forever)."""
    gpus = (1.0 if cluster.gpus else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if gpus < 0 or cpus_per_worker <= 0:
        raise UserError(f"--gpus-per-worker {gpus:g} / --cpus-per-worker {cpus_per_worker:g}: expected GPUs >= 0 "
                        f"and CPUs > 0 per worker")
    if not any(node["GPU"] >= gpus and node["CPU"] >= cpus_per_worker for node in cluster.nodes):
        biggest = ", ".join(f"{node['host']}: {node['CPU']:g} CPU / {node['GPU']:g} GPU" for node in cluster.nodes)
        raise UserError(f"no node of the Ray cluster has {gpus:g} GPU(s) and {cpus_per_worker:g} CPU(s) for one worker "
                        f"({biggest}); expected smaller --gpus-per-worker / --cpus-per-worker")
    return gpus, cpus_per_worker


def threads_per_worker(cpus_per_worker: float) -> int:
    """Torch threads of a worker given ``cpus_per_worker`` CPUs by Ray (at least 1)."""
    return max(1, int(cpus_per_worker))


@dataclass
class Placement:
    """What each worker asks Ray for, on which cluster."""

    cluster: Cluster
    gpus: float
    cpus: float

    @property
    def device(self) -> str:
        """The device of ``workers.worker_command``: a GPU worker trains on the GPU Ray gave it."""
        return "0" if self.gpus else "cpu"

    @property
    def threads(self) -> int:
        return threads_per_worker(self.cpus)


def prepare(address: str, storage_url: str, gpus_per_worker: float | None, cpus_per_worker: float) -> Placement:
    """Connect to the cluster, check that its nodes can reach the storage and hold a worker; done
    before the data is loaded, so a mistake costs nothing."""
    cluster = connect(address)
    try:
        check_storage_for_cluster(storage_url, cluster.multi_node)
        return Placement(cluster, *worker_resources(cluster, gpus_per_worker, cpus_per_worker))
    except UserError:
        import_ray().shutdown()
        raise


# ---------------------------------------------------------------------------------------------
# The driver


def launch_on_ray(commands: list[list[str]], *, placement: Placement, log_dir: Path, log_prefix: str = "",
                  show: Callable[[bool], None] = lambda final: None, max_restarts: int = MAX_RESTARTS) -> int:
    """Run each command line (``[python, ...]``, a worker) as a Ray task asking for ``placement``'s
    GPUs and CPUs, restarted up to ``max_restarts`` times when it dies; ``show(final)`` draws the
    progress line every ``POLL_SECONDS``. The worker's log is ``log_dir/<log_prefix>worker<i>.log``
    on the node that runs it (a ``python`` first in a command becomes that node's interpreter). Returns 0, 130 when
    interrupted (Ctrl-C/SIGTERM), 1 when a worker failed for good. Disconnects from Ray at the end."""
    ray = import_ray()
    log_dir = Path(log_dir).resolve()
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    task = ray.remote(_run_worker).options(num_gpus=placement.gpus, num_cpus=placement.cpus,
                                           max_retries=max_restarts, retry_exceptions=[WorkerExited])
    refs = [task.remote(index, command, env, str(log_dir / f"{log_prefix}worker{index}.log"), os.getcwd(),
                        sys.executable, placement.threads, placement.gpus > 0)
            for index, command in enumerate(commands)]
    log(f"{placement.cluster.describe()}; launched {len(refs)} worker(s) with {placement.gpus:g} GPU(s) and "
        f"{placement.cpus:g} CPU(s) each, restarted up to {max_restarts} time(s); logs in "
        f"{log_dir}/{log_prefix}worker*.log on the node running each worker")
    try:
        outcomes = supervise_tasks(ray, refs, show)
    finally:
        ray.shutdown()
    return report(outcomes)


def supervise_tasks(ray, refs: list, show: Callable[[bool], None]) -> dict:
    """Wait for every task, showing progress; the first SIGINT/SIGTERM cancels them (the worker
    stops its trial and queues it again), a second one or ``KILL_AFTER_SECONDS`` force-cancels.
    Returns {"interrupted": bool, "results": [None or the exception, per task]}."""
    from tagsearch.runtime.launch import Hangup
    from tagsearch.runtime.progress import Poll

    signals: list[int] = []
    hangup, poll = Hangup(None), Poll()
    previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup.on_signal)
    pending, results, cancelled, since = list(refs), {}, 0, None
    try:
        while pending:
            hangup.check()
            if len(signals) > cancelled:
                cancelled, since = len(signals), since or time.monotonic()
                cancel(ray, pending, force=cancelled > 1)
            if since is not None and time.monotonic() - since > KILL_AFTER_SECONDS:
                cancel(ray, pending, force=True)
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
            for ref in done:
                results[ref] = outcome(ray, ref)
            poll(lambda: show(False))
        poll(lambda: show(True))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return {"interrupted": bool(signals), "results": [results[ref] for ref in refs]}


def cancel(ray, refs: list, force: bool) -> None:
    for ref in refs:
        try:
            ray.cancel(ref, force=force)
        except Exception:  # finished meanwhile
            pass


def outcome(ray, ref) -> BaseException | None:
    """None when the task ended well, else the reason (the task's own exception where it has one)."""
    try:
        ray.get(ref)
        return None
    except ray.exceptions.RayTaskError as exc:
        return exc.cause if isinstance(exc.cause, BaseException) else exc
    except Exception as exc:  # TaskCancelledError, WorkerCrashedError, NodeDiedError, ...
        return exc


def report(outcomes: dict) -> int:
    results = outcomes["results"]
    if outcomes["interrupted"]:
        log(f"interrupted: {len(results)} worker(s) stopped; interrupted trials are queued again, rerun to resume")
        return 130
    for index, reason in enumerate(results):
        if reason is not None:
            text = str(reason).strip().splitlines() or [type(reason).__name__]
            warning(f"worker {index} failed for good: {text[0]}")
            for line in text[1:]:
                warning(f"    {line}")
    return 1 if any(reason is not None for reason in results) else 0


# ---------------------------------------------------------------------------------------------
# The task: one worker process on the node Ray chose


def _run_worker(index: int, command: list[str], env: dict, log_path: str, cwd: str, driver_python: str,
                threads: int, gpus: bool) -> int:
    """Run ``command`` until it exits; raise ``WorkerExited`` (retried by Ray) when it did not end
    well, ``WorkerRefused`` when it refused its input. On cancellation (KeyboardInterrupt) stop it
    with SIGTERM, then SIGKILL after ``KILL_AFTER_SECONDS`` or a second cancellation."""
    host = socket.gethostname()
    if not os.path.isdir(cwd):
        raise WorkerRefused(f"worker {index}: the launch directory {cwd} does not exist on {host}; expected the "
                            f"same checkout, spec and data paths on every node (docs/ray.md)")
    if command and command[0] == driver_python:
        command = [sys.executable, *command[1:]]  # this node's Python (the one that runs Ray here)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if gpus else ""
    child_env = {**os.environ, **env, "TAGSEARCH_WORKER_INDEX": str(index), "CUDA_VISIBLE_DEVICES": visible,
                 "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as handle:
        process = spawn(command, child_env, handle, cwd=cwd)
        handle.write(f"\n[ray task on {host}: worker {index} pid {process.pid} "
                     f"CUDA_VISIBLE_DEVICES={visible!r}]\n$ {' '.join(command)}\n")
        handle.flush()
    log(f"worker {index} started on {host} (pid {process.pid}, CUDA_VISIBLE_DEVICES={visible!r}); log {log_path}")
    try:
        code = wait(process)
    except KeyboardInterrupt:  # ray.cancel: stop the worker as Ctrl-C stops a local one
        stop(process)
        raise
    if code == 0:
        return 0
    what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    last = tail(log_path)
    message = f"worker {index} (pid {process.pid} on {host}) {what}; last lines of {log_path}:\n" + last
    refused = code == 2 and OUTAGE_MARK not in last  # an outage outlasted the limit: the input was fine
    raise (WorkerRefused if refused else WorkerExited)(message)


def wait(process: subprocess.Popen) -> int:
    """``process.wait()`` in short sleeps, so that a cancellation's KeyboardInterrupt lands soon."""
    while process.poll() is None:
        time.sleep(0.2)
    return process.returncode


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_AFTER_SECONDS
    try:
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:  # cancelled again
        pass
    if process.poll() is None:
        process.kill()
        process.wait()


def tail(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError as exc:
        return f"    (unreadable: {exc})"
    return "\n".join(f"    {line}" for line in lines[-TAIL_LINES:])

