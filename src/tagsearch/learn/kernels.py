"""CPU kernels compiled with numba, for the updates torch cannot do in place: lazy Adam and lazy SGD
on rows.

torch can only update scattered rows of a table by gathering them into a new tensor and
scattering the result back (``index_select`` + ``index_copy_``), which on a ~100k-row embedding
table moves every touched row of the parameter and both moments twice through memory; the loop
below reads and writes each of them once, in place. ``benchmarks/profile_step.py``: ~12 → ~6 ms
of a dense training step on the built-in corpus (BENCHMARKS.md).
"""

from __future__ import annotations

import types

import numba
import numpy as np
from numba import njit, prange


def _lazy_adam_rows(param, exp_avg, exp_avg_sq, rows, grad, step_size, beta1, beta2, eps, decay):
    """For each ``i``: row ``rows[i]`` of ``param`` is scaled by ``decay`` (AdamW's decoupled weight
    decay, 1 - lr·wd; 1 = none), then it and its moments take one Adam step with gradient row
    ``grad[i]``, as ``torch.optim.SparseAdam`` does (``step_size`` = lr·√(1-β₂ᵗ)/(1-β₁ᵗ), ε added
    to √v). All arrays float32 and C-contiguous, ``rows`` unique int64."""
    one = np.float32(1.0)
    for i in prange(rows.shape[0]):  # rows are unique: threads never share one
        p, m, v, g = param[rows[i]], exp_avg[rows[i]], exp_avg_sq[rows[i]], grad[i]
        for j in range(g.shape[0]):
            m[j] = beta1 * m[j] + (one - beta1) * g[j]
            v[j] = beta2 * v[j] + (one - beta2) * g[j] * g[j]
            p[j] = p[j] * decay - step_size * m[j] / (np.sqrt(v[j]) + eps)


def _lazy_sgd_rows(param, momentum_buffer, rows, grad, lr, momentum, weight_decay):
    """For each ``i``: row ``rows[i]`` takes one step of torch's SGD with momentum and (coupled)
    weight decay, gradient row ``grad[i]``: ``buf = momentum·buf + grad + weight_decay·row``, then
    ``row -= lr·buf``. Same array conventions as ``_lazy_adam_rows``."""
    for i in prange(rows.shape[0]):
        p, b, g = param[rows[i]], momentum_buffer[rows[i]], grad[i]
        for j in range(g.shape[0]):
            b[j] = momentum * b[j] + g[j] + weight_decay * p[j]
            p[j] -= lr * b[j]


# error_model="numpy": IEEE arithmetic (a NaN gradient gives NaN rows, which the training loop reports
# as divergence) instead of numba's Python-style ZeroDivisionError checks; no fastmath, which would
# let the compiler assume there are no NaNs.
_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}


def _renamed(function, suffix: str):
    """A copy of ``function`` under another name, so that its compiled form is cached apart."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__ + suffix)
    copy.__qualname__ = copy.__name__
    return copy


_SERIAL = {f.__name__: njit(**_OPTIONS)(f) for f in (_lazy_adam_rows, _lazy_sgd_rows)}
_PARALLEL = {f.__name__: njit(parallel=True, **_OPTIONS)(_renamed(f, "_parallel"))
             for f in (_lazy_adam_rows, _lazy_sgd_rows)}


def _for_threads(name: str, threads: int):
    """The loop compiled for ``threads`` (torch's thread count): serial for 1 (as under ``launch``
    with one worker per core), else split over the rows by numba's thread pool. Pass torch's count:
    numba's pool is OpenMP, like torch's, and a numba region wider than torch's setting changed
    later 1-thread training results in the same process."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if threads <= 1:
        return _SERIAL[name]
    numba.set_num_threads(threads)
    return _PARALLEL[name]


def lazy_adam_rows(threads: int = 1):
    return _for_threads("_lazy_adam_rows", threads)


def lazy_sgd_rows(threads: int = 1):
    return _for_threads("_lazy_sgd_rows", threads)
