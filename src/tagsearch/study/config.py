"""The typed sections of a study spec: ``[sampler]``, ``[pruner]`` and ``[training]`` as frozen values
that hold their defaults and check themselves when built (``[data]`` is ``data.corpus.DataConfig``).

Each is built from its TOML table by ``from_table`` (unknown keys and wrong types refused there) and
raises a ``UserError`` naming the key, the bad value and what was expected; ``spec.parse_spec``
puts the file and the section in front of that line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tagsearch.errors import UserError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "hyperband", "none")


def _one_of(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r}; expected one of {', '.join(allowed)}")


def _at_least_one(key: str, value) -> None:
    if value < 1:
        raise UserError(f"{key}={value!r} is out of range; expected an integer >= 1")


class Section:
    """What the typed sections share: built from a spec's table, written back as one."""

    @classmethod
    def from_table(cls, table: dict):
        """The section of a spec's table (keys and types already checked by ``spec.parse_spec``)."""
        return cls(**table)

    def replace(self, **changes):
        """This section with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_table(self) -> dict:
        """The section as a TOML table: every value that is set (None means the default)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SamplerConfig(Section):
    """``[sampler]``: TPE (constant liar, so parallel workers spread out) or random."""

    kind: str = "tpe"
    seed: int | None = None  # None: a fresh seed per worker
    n_startup_trials: int = 10
    multivariate: bool = False
    group: bool = False

    def __post_init__(self):
        _one_of("kind", self.kind, SAMPLERS)
        if self.group and not self.multivariate:
            raise UserError("group = true needs multivariate = true (TPE groups the parameters of its multivariate "
                            "model); expected both, or neither")


@dataclass(frozen=True)
class PrunerConfig(Section):
    """``[pruner]``: median | halving | hyperband | none, patient when ``patience`` > 0.
    ``min_resource`` and ``reduction_factor`` left None take the kind's own (``resources``)."""

    kind: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    patience: int = 0
    min_resource: int | None = None
    reduction_factor: int | None = None
    min_delta: float = 0.0

    def __post_init__(self):
        _one_of("kind", self.kind, PRUNERS)

    def resources(self) -> tuple[int | str, int]:
        """``(min_resource, reduction_factor)`` for this kind: halving's default to ("auto", 4),
        hyperband's to (1, 3)."""
        floor, factor = ("auto", 4) if self.kind == "halving" else (1, 3)
        return (floor if self.min_resource is None else self.min_resource,
                factor if self.reduction_factor is None else self.reduction_factor)


@dataclass(frozen=True)
class TrainingConfig(Section):
    """``[training]``: how long each trial trains, where, and how retrain finishes."""

    max_epochs: int = 10
    patience: int = 2
    device: str = "auto"
    refit: bool = False
    folds: int | str = "auto"  # "auto", or k: 1 = the validation split alone, k > 1 = k-fold cross-validation

    def __post_init__(self):
        _at_least_one("max_epochs", self.max_epochs)
        _at_least_one("patience", self.patience)
        folds = self.folds
        if folds != "auto" and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 1):
            raise UserError(f"folds={folds!r}; expected \"auto\" or an integer >= 1 (1 = the validation split "
                            f"alone, k > 1 = k-fold cross-validation over training + validation)")


def check_time(key: str, value: float | None, whole_study: bool = False) -> None:
    """``[study]`` timeout (seconds per worker) or time_budget (the whole study's): None or > 0."""
    if value is None:
        return
    if whole_study and not 0 < value < math.inf:
        raise UserError(f"{key}={value!r} is out of range; expected a finite number of seconds > 0 (the whole "
                        f"study's time)")
    if value <= 0:
        raise UserError(f"{key}={value!r} is out of range; expected seconds > 0")
