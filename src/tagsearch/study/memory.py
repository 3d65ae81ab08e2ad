"""Memory as a budget: what a trial will hold, from its parameters, before it allocates; what this
process holds now; and each worker's share of the machine.

A trial's models dominate a worker's memory: a TF-IDF first layer of 100,000 features × 1,024 units
is 410 MB of float32, and Adam keeps two moments of it, for each cross-validation fold, trained in
lockstep. ``trial_bytes`` counts those tensors as ``learn.models`` and ``learn.train`` allocate
them (``tests/test_memory.py`` checks it against the tensors a real step allocates); the objective
prunes a trial whose estimate does not fit beside what the process already holds (``resident_bytes``)
within the worker's ``--memory``. Torch-free, like ``tagsearch launch``.
"""

from __future__ import annotations

import os

from tagsearch.errors import UserError

FLOAT_BYTES = 4
GIB = 1024**3
HEADROOM = 0.2  # of the machine's memory, left to the OS, the page cache and the supervising process
WORKER_CAP = 2 * GIB  # a CPU worker's default share at most (--memory raises it)
WORKER_FLOOR = GIB  # below this a worker cannot hold the runtime and one small trial


def head_shapes(n_in: int, params: dict, n_tags: int) -> list[tuple[int, int]]:
    """The (in, out) of each linear layer of ``models.MLPHead``: the blocks, then one logit per tag."""
    widths = [n_in] + [params["hidden1"], params["hidden2"]][:params.get("hidden_layers", 2)]
    return list(zip(widths, widths[1:])) + [(widths[-1], n_tags)]


def parameter_counts(params: dict, input_size: int, n_tags: int) -> tuple[int, int, int]:
    """(row-sparse parameters, dense parameters, buffers) of the model ``models.build_model`` makes
    for ``params`` over a featurizer of ``input_size``: row-sparse are the embedding table (dense
    kind) or the first linear layer's weight over sparse rows (tfidf, encoder_tfidf), whose
    gradients are row-sparse; buffers are BatchNorm's running statistics."""
    model = params["model"]
    shapes = head_shapes(params["embedding_dim"] if model == "dense" else input_size, params, n_tags)
    sparse = 0
    if model == "dense":
        sparse = input_size * params["embedding_dim"]
    elif model in ("tfidf", "encoder_tfidf"):
        sparse = shapes[0][0] * shapes[0][1]
    dense = sum(a * b + b for a, b in shapes) - (0 if model in ("dense", "encoder") else sparse)
    blocks = [b for _, b in shapes[:-1]]
    dense += sum(2 * b for b in blocks)  # BatchNorm's weight and bias
    return sparse, dense, sum(2 * b + 1 for b in blocks)


def transformer_layer_parameters(hidden: int) -> int:
    """A BERT-like layer's parameters (attention 4h² + 4h, feed-forward h·4h + 4h + 4h·h + h, two
    LayerNorms 4h): what each trained layer of a ``finetune`` trial adds."""
    return 12 * hidden * hidden + 13 * hidden


def finetune_activation_bytes(params: dict, hidden: int) -> int:
    """What one training batch of a ``finetune`` trial keeps for its backward pass, per trained
    layer and token: ~18 hidden-wide tensors (attention projections, the 4h feed-forward before and
    after its activation, LayerNorms, dropout masks) and two attention maps of ``hidden // 32``
    heads over the batch's width (``max_seq_length`` at most)."""
    tokens = params["batch_size"] * params["max_seq_length"]
    per_token = 18 * hidden + 2 * max(hidden // 32, 1) * params["max_seq_length"]
    return FLOAT_BYTES * tokens * per_token * int(params["train_layers"])


def trial_bytes(params: dict, input_size: int, n_tags: int, folds: int = 1, keep_best: bool = False) -> int:
    """Bytes of the tensors a trial of ``params`` holds at its peak: per fold, the parameters, the
    dense parameters' gradients, the optimizer's state (AdamW/lazy Adam: two moments; SGD: one
    momentum buffer) and, with ``keep_best``, a copy of the best epoch's state. A ``finetune``
    trial (``input_size``: the encoder's hidden size) adds its trained layers to each fold and one
    batch's activations (``finetune_activation_bytes``)."""
    sparse, dense, buffers = parameter_counts(params, input_size, n_tags)
    if params["model"] == "finetune":
        dense += int(params["train_layers"]) * transformer_layer_parameters(input_size)
    moments = 2 if params.get("optimizer", "adamw") == "adamw" or params["model"] == "finetune" else 1
    per_fold = (sparse + dense) * (1 + moments) + dense + buffers
    if keep_best:
        per_fold += sparse + dense + buffers
    batch = finetune_activation_bytes(params, input_size) if params["model"] == "finetune" else 0
    return FLOAT_BYTES * per_fold * folds + batch


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (``getrusage``; Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_bytes() -> int:
    """The machine's memory, or its cgroup's limit where that is lower (a container)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def worker_share(workers: int, total: int | None = None) -> int:
    """A worker's default ``--memory``: the machine's memory less ``HEADROOM``, split among
    ``workers``, at most ``WORKER_CAP`` (a worker that wants more for bigger models says so with
    ``--memory``)."""
    total = machine_bytes() if total is None else total
    return int(min(WORKER_CAP, total * (1 - HEADROOM) / max(workers, 1)))


def workers_fitting(cores: int, total: int | None = None) -> int:
    """How many CPU workers the machine's memory holds at ``WORKER_FLOOR`` each, at most ``cores``."""
    total = machine_bytes() if total is None else total
    return max(1, min(cores, int(total * (1 - HEADROOM) // WORKER_FLOOR)))


def parse_memory(text: str) -> int:
    """``--memory``: ``"2G"``, ``"1500M"``, ``"2.5GB"`` or bytes → bytes (a UserError otherwise)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in units and cleaned[-1:].isalpha() else (cleaned, "")
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = -1
    if not value >= 256 * 1024**2:
        raise UserError(f"--memory {text!r} is not a memory size of at least 256M; expected e.g. 2G, 1500M")
    return int(value)


def describe(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GB" if n_bytes >= GIB else f"{n_bytes / 1024**2:.0f} MB"
