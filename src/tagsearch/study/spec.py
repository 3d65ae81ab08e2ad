"""Study specs (``studies/*.toml``) and hyperparameters, as plain data, validated at the boundary.

A spec has these sections (see ``studies/README.md``)::

    [study]     name, storage, metric (direction inferred), n_trials, timeout, time_budget
    [sampler]   kind = "tpe" | "random", seed, n_startup_trials
    [pruner]    kind = "median" | "halving" | "hyperband" | "none", n_warmup_steps, patience, ...
    [data]      path, text_columns, tags_column, top_k, test_size, val_size, split_seed
    [training]  max_epochs, patience, device, refit
    [defaults]  one value per hyperparameter (the seed notebooks' configuration): trial 0
    [defaults.KIND]  (a spec that searches ``model``) KIND's own defaults, queued after trial 0
    [search.X]  how to search hyperparameter X: {low, high, log, step} or {choices}

Every error is a ``UserError`` naming the file, the key, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tagsearch.data.builtin import BUILTIN_DATA, BUILTIN_PATH
from tagsearch.data.corpus import DataConfig
from tagsearch.errors import UserError
from tagsearch.learn.metrics import DIRECTIONS
from tagsearch.study.config import PRUNERS, SAMPLERS, PrunerConfig, SamplerConfig, TrainingConfig, check_time  # noqa: F401  (SAMPLERS, PRUNERS: spec.X as before)
from tagsearch.study.specfile import spec_toml

MODELS = ("dense", "tfidf", "encoder", "encoder_tfidf", "finetune")
TFIDF_MODELS = ("tfidf", "encoder_tfidf")  # models whose features include TF-IDF
ENCODER_MODELS = ("encoder", "encoder_tfidf", "finetune")  # models built on a pretrained encoder
EMBEDDING_MODELS = ("encoder", "encoder_tfidf")  # the models over the host's cache of frozen embeddings
NOT_FINETUNE = ("dense", "tfidf", "encoder", "encoder_tfidf")  # finetune: AdamW, gradient norm clipped to 1
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
POS_WEIGHT_SCHEMES = ("seed", "neg_pos", "none")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_STORAGE = "sqlite:///storage/tagsearch.db"


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, the check its value must pass, and what that check means."""

    type: type
    check: object  # callable value -> bool
    expected: str
    models: tuple[str, ...] = MODELS


PARAMS: dict[str, Param] = {
    "model": Param(str, lambda v: v in MODELS, "one of " + ", ".join(MODELS)),
    "embedding_dim": Param(int, lambda v: v >= 1, "an integer >= 1", ("dense",)),
    "hidden_layers": Param(int, lambda v: 0 <= v <= 2, "an integer in [0, 2]"),
    "hidden1": Param(int, lambda v: v >= 1, "an integer >= 1"),
    "hidden2": Param(int, lambda v: v >= 1, "an integer >= 1"),
    "dropout": Param(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer": Param(str, lambda v: v in OPTIMIZERS, "one of adamw, sgd", NOT_FINETUNE),
    "lr": Param(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "sgd_lr": Param(float, lambda v: 0 < v <= 100, "a number in (0, 100]", NOT_FINETUNE),
    "weight_decay": Param(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "batch_size": Param(int, lambda v: v >= 2, "an integer >= 2"),
    "threshold": Param(float, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "min_freq": Param(int, lambda v: v >= 1, "an integer >= 1", ("dense",)),
    "word_ngrams": Param(int, lambda v: 1 <= v <= 3, "an integer in [1, 3]", ("dense",)),
    "buckets": Param(int, lambda v: v >= 1, "an integer >= 1", ("dense",)),
    "max_features": Param(int, lambda v: v >= 0, "an integer >= 0 (0 = no limit)", TFIDF_MODELS),
    "min_df": Param(int, lambda v: v >= 1, "an integer >= 1", TFIDF_MODELS),
    "ngram_max": Param(int, lambda v: 1 <= v <= 3, "an integer in [1, 3]", TFIDF_MODELS),
    "sublinear_tf": Param(bool, lambda v: True, "true or false", TFIDF_MODELS),
    "encoder": Param(str, lambda v: bool(v.strip()), "a sentence-transformers model name or local directory",
                     ENCODER_MODELS),
    "max_seq_length": Param(int, lambda v: 8 <= v <= 512, "an integer in [8, 512]", ENCODER_MODELS),
    "encoder_weight": Param(float, lambda v: 0 < v <= 10, "a number in (0, 10]", ("encoder_tfidf",)),
    "pos_weight": Param(str, lambda v: v in POS_WEIGHT_SCHEMES, "one of seed, neg_pos, none"),
    "clip_value": Param(float, lambda v: v > 0, "a number > 0", NOT_FINETUNE),
    "encoder_lr": Param(float, lambda v: 0 < v <= 1, "a number in (0, 1]", ("finetune",)),
    "train_layers": Param(int, lambda v: v >= 1, "an integer >= 1 (at least the model's layers = all)",
                          ("finetune",)),
    "layer_decay": Param(float, lambda v: 0 < v <= 1, "a number in (0, 1]", ("finetune",)),
    "warmup": Param(float, lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]", ("finetune",)),
    "finetune_epochs": Param(int, lambda v: 1 <= v <= 100, "an integer in [1, 100]", ("finetune",)),
    "max_steps": Param(int, lambda v: v >= 0, "an integer >= 0 (0 = no limit)", ("finetune",)),
    "seed": Param(int, lambda v: True, "an integer"),
}

# The seed notebooks' configuration (word_ngrams, buckets, min_df: what the notebooks did implicitly).
SEED_DEFAULTS = {
    "model": "dense", "embedding_dim": 300, "hidden_layers": 2, "hidden1": 200, "hidden2": 100, "dropout": 0.5,
    "optimizer": "adamw", "lr": 1e-3, "sgd_lr": 1.0, "weight_decay": 0.01, "batch_size": 128, "threshold": 0.5,
    "min_freq": 1, "word_ngrams": 1,
    "buckets": 262144, "max_features": 5000, "min_df": 1, "ngram_max": 1, "sublinear_tf": False,
    "pos_weight": "seed", "clip_value": 10.0, "seed": 42,
    "encoder": DEFAULT_ENCODER, "max_seq_length": 256, "encoder_weight": 0.5,
    "encoder_lr": 5e-5, "train_layers": 1, "layer_decay": 1.0, "warmup": 0.1, "finetune_epochs": 4,
    "max_steps": 0,
}

SECTIONS = {
    "study": {"name": str, "storage": str, "metric": str, "direction": str, "n_trials": int, "timeout": float,
              "time_budget": float},
    "sampler": {"kind": str, "seed": int, "n_startup_trials": int, "multivariate": bool, "group": bool},
    "pruner": {"kind": str, "n_startup_trials": int, "n_warmup_steps": int, "patience": int,
               "min_resource": int, "reduction_factor": int, "min_delta": float},
    "data": {"path": str, "text_columns": list, "tags_column": str, "top_k": int, "test_size": float,
             "val_size": float, "split_seed": int, "encoding": str},
    "training": {"max_epochs": int, "patience": int, "device": str, "refit": bool, "folds": object},
    "defaults": {name: p.type for name, p in PARAMS.items()},
    "search": dict,
}
SEARCH_KEYS = {"low", "high", "log", "step", "choices"}


def coerce(name: str, value, where: str = "--param"):
    """Check ``value`` for hyperparameter ``name`` (converting strings from the command line)."""
    if name not in PARAMS:
        raise UserError(f"{where}: unknown hyperparameter {name!r}; expected one of {', '.join(PARAMS)}")
    param = PARAMS[name]
    try:
        value = _convert(value, param.type)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {name}={value!r} is not {param.expected}") from None
    if not param.check(value):
        raise UserError(f"{where}: {name}={value!r} is out of range; expected {param.expected}")
    return value


def _convert(value, kind: type):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        result = float(value)
        if not math.isfinite(result):
            raise ValueError(value)
        return result
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def parse_overrides(items: list[str] | None) -> dict:
    """``["lr=0.01", "model=tfidf"]`` → validated dict."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {item!r} is not KEY=VALUE (e.g. --param dropout=0.3)")
        overrides[key.strip()] = coerce(key.strip(), value.strip())
    return overrides


STUDY_KEYS = ("name", "storage", "metric", "direction", "n_trials", "timeout", "time_budget")
CONFIGS = {"sampler": SamplerConfig, "pruner": PrunerConfig, "training": TrainingConfig}


@dataclass(frozen=True)
class Spec:
    """A parsed, validated study spec: a value. ``table`` is the TOML it was read from (what
    ``to_toml`` writes back, key for key); ``replace`` gives the spec of that table changed."""

    path: str
    name: str
    storage: str = DEFAULT_STORAGE
    metric: str = "hamming_loss"
    n_trials: int = 20
    timeout: float | None = None  # seconds per worker
    time_budget: float | None = None  # seconds for the study as a whole (its deadline: runtime/deadline.py)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(BUILTIN_DATA, allow_pickle=False))
    training: TrainingConfig = field(default_factory=TrainingConfig)
    defaults: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    early: list[dict] = field(default_factory=list)  # [defaults.KIND]: complete parameters, queued after trial 0
    table: dict = field(default_factory=dict, compare=False, repr=False)

    def kind_defaults(self, kind: str) -> dict:
        """What ``[defaults.KIND]`` sets for ``kind`` (empty without one): every trial of the kind
        starts from these values, so a setting the spec does not search (a finetune trial's 128
        tokens, an encoder kind's model) is the kind's own, not trial 0's."""
        early = next((p for p in self.early if p["model"] == kind), {})
        return {k: early[k] for k in self.table.get("defaults", {}).get(kind, {}) if k in early}

    @property
    def models(self) -> tuple[str, ...]:
        """The models this spec's trials may build: ``[search.model]``'s choices, else the default's."""
        return tuple(self.search.get("model", {}).get("choices", [self.model]))

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.metric]

    @property
    def refit(self) -> bool:
        return self.training.refit

    @property
    def folds(self) -> int | str:
        return self.training.folds

    @property
    def model(self) -> str:
        return self.defaults["model"]

    @property
    def max_epochs(self) -> int:
        return self.training.max_epochs

    @property
    def patience(self) -> int:
        return self.training.patience

    @property
    def device(self) -> str:
        return self.training.device

    def data_config(self, path: str | None = None) -> DataConfig:
        """The spec's ``[data]``, with ``path`` (named by the user) instead of its path if given. A
        pickle is read only from a path the user named, not from one the spec names."""
        chosen = path or self.data.path
        return dataclasses.replace(self.data, path=BUILTIN_PATH if chosen == BUILTIN_DATA else chosen,
                                   allow_pickle=bool(path))

    def params(self, overrides: dict | None = None) -> dict:
        return {**self.defaults, **(overrides or {})}

    def replace(self, **changes) -> Spec:
        """The spec of this one's table changed, checked as a file would be: ``path``; a ``[study]``
        key (``name``, ``storage``, ``metric``, ``n_trials``, ``time_budget``; None removes
        ``timeout`` or ``direction``); ``sampler``/``pruner``/``data``/``training`` as a config (the
        whole section) or a dict (those keys set); ``defaults`` or ``search`` as a whole table."""
        table = {section: dict(value) for section, value in self.table.items()}
        where = str(changes.pop("path", self.path))
        for key, value in changes.items():
            if key in STUDY_KEYS:
                study = table.setdefault("study", {})
                if value is None:
                    study.pop(key, None)
                else:
                    study[key] = value
            elif key in (*CONFIGS, "data"):
                if isinstance(value, dict):
                    table.setdefault(key, {}).update(value)
                else:
                    table[key] = _data_table(value) if key == "data" else value.to_table()
            elif key in ("defaults", "search"):
                table[key] = dict(value)
            else:
                raise TypeError(f"Spec.replace: unknown field {key!r}")
        return parse_spec(table, where)

    def to_toml(self, comment: str = "") -> str:
        """The spec as a TOML file's text (its table as read, with what ``replace`` changed), under
        ``comment`` as ``#`` lines."""
        return spec_toml(self.table, comment)


def _data_table(config: DataConfig) -> dict:
    """A ``DataConfig`` as a ``[data]`` table."""
    table = {k: v for k, v in dataclasses.asdict(config).items() if v is not None and k != "allow_pickle"}
    table["text_columns"] = list(config.text_columns)
    return table


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study spec {str(path)!r} not found; expected a TOML file such as studies/dense.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"study spec {str(path)!r} is not valid TOML: {exc}") from None
    return parse_spec(raw, str(path))


def check_study_name(name, where: str = "study name") -> str:
    """``name`` if it can name a study and, unchanged, a file or folder (``results/<name>``,
    ``storage/<name>.toml``): not empty, no path separator, no ``..``, not hidden, no control
    character. A UserError naming it otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where} {name!r} is not a name; expected a non-empty string such as 'tagger-posts'")
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"{where} {name!r} cannot name a study: it becomes a folder name (results/<name>), so "
                        f"expected no '/', '\\', '..', leading '.' or control character, such as 'tagger-posts'")
    return name


def parse_spec(raw: dict, where: str = "spec") -> Spec:
    for section, value in raw.items():
        if section not in SECTIONS:
            raise UserError(f"{where}: unknown section [{section}]; expected one of {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise UserError(f"{where}: [{section}] must be a table, got {type(value).__name__}")
    for section in ("study", "sampler", "pruner", "data", "training"):
        _check_keys(raw.get(section, {}), SECTIONS[section], f"{where} [{section}]")
    study = raw.get("study", {})
    if "name" not in study:
        raise UserError(f"{where} [study]: missing key 'name'")
    check_study_name(study["name"], f"{where} [study] name")
    flat = {k: v for k, v in raw.get("defaults", {}).items() if not isinstance(v, dict)}
    defaults = {**SEED_DEFAULTS, **{k: coerce(k, v, f"{where} [defaults]") for k, v in flat.items()}}
    early = _early_defaults(raw.get("defaults", {}), _models(raw, defaults), where)
    metric = study.get("metric", "hamming_loss")
    if metric not in DIRECTIONS:
        raise UserError(f"{where} [study]: metric={metric!r}; expected one of {', '.join(DIRECTIONS)}")
    if study.get("direction", DIRECTIONS[metric]) != DIRECTIONS[metric]:
        raise UserError(f"{where} [study]: direction={study['direction']!r} contradicts metric={metric!r}, which "
                        f"is {DIRECTIONS[metric]}d; expected no direction (it is inferred from the metric)")
    models = _models(raw, defaults)
    n_trials = study.get("n_trials", 20)
    if n_trials < 1:
        raise UserError(f"{where} [study]: n_trials={n_trials!r} is out of range; expected an integer >= 1")
    for key, whole in (("timeout", False), ("time_budget", True)):
        _in_section(where, "study", check_time, key, study.get(key), whole)
    return Spec(path=where, name=study["name"], storage=study.get("storage", DEFAULT_STORAGE), metric=metric,
                n_trials=n_trials, timeout=study.get("timeout"), time_budget=study.get("time_budget"),
                sampler=_in_section(where, "sampler", SamplerConfig.from_table, raw.get("sampler", {})),
                pruner=_in_section(where, "pruner", PrunerConfig.from_table, raw.get("pruner", {})),
                data=_in_section(where, "data", _data_of, raw.get("data", {})),
                training=_in_section(where, "training", TrainingConfig.from_table, raw.get("training", {})),
                defaults=defaults, early=early,
                search={k: _check_search(k, v, models, f"{where} [search.{k}]") for k, v in raw.get("search", {}).items()},
                table=raw)


def _in_section(where: str, section: str, build, *args):
    """``build(*args)``, its UserError prefixed with the file and the section."""
    try:
        return build(*args)
    except UserError as exc:
        raise UserError(f"{where} [{section}]: {exc}") from None


def _data_of(table: dict) -> DataConfig:
    """A spec's ``[data]`` (its path "builtin" when it names none; a pickle it names is not read)."""
    return DataConfig(**{**table, "path": table.get("path", BUILTIN_DATA),
                         "text_columns": tuple(table.get("text_columns", ()))}, allow_pickle=False)


def _early_defaults(table: dict, models: tuple[str, ...], where: str) -> list[dict]:
    """``[defaults.KIND]`` tables, in file order: each KIND's complete parameters (the seed's values
    under the table's, as a one-kind spec's [defaults]), for a trial queued after trial 0."""
    early = []
    for kind, values in table.items():
        if not isinstance(values, dict):
            continue
        at = f"{where} [defaults.{kind}]"
        if kind not in MODELS:
            raise UserError(f"{at}: unknown model {kind!r}; expected a table named after one of {', '.join(MODELS)} "
                            f"(or a plain key = value)")
        if kind not in models:
            raise UserError(f"{at}: {kind!r} is not one of the spec's models ({', '.join(models)}); expected it "
                            f"in [search.model] choices")
        if values.get("model", kind) != kind:
            raise UserError(f"{at}: model={values['model']!r} contradicts the table's name; expected no model "
                            f"key (it is {kind!r})")
        bad = sorted(k for k, v in values.items() if isinstance(v, dict))
        if bad:
            raise UserError(f"{at}: {bad[0]!r} is a table; expected one value per hyperparameter")
        early.append({**SEED_DEFAULTS, **{k: coerce(k, v, at) for k, v in values.items()}, "model": kind})
    return early


def _check_keys(table: dict, schema: dict, where: str) -> None:
    for key, value in table.items():
        if key not in schema:
            raise UserError(f"{where}: unknown key {key!r}; expected one of {', '.join(schema)}")
        kind = schema[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise UserError(f"{where}: {key}={value!r} has the wrong type; expected {kind.__name__}")


def _models(raw: dict, defaults: dict) -> tuple[str, ...]:
    """The models a spec's trials may build: ``[search.model]``'s choices, else the default's."""
    choices = raw.get("search", {}).get("model", {})
    listed = choices.get("choices") if isinstance(choices, dict) else None
    return tuple(m for m in listed if m in MODELS) if isinstance(listed, list) else (defaults["model"],)


def _check_search(name: str, entry, models: tuple[str, ...], where: str) -> dict:
    if name not in PARAMS or name in ("seed", "encoder"):
        raise UserError(f"{where}: {name!r} cannot be searched; expected one of "
                        f"{', '.join(k for k in PARAMS if k not in ('seed', 'encoder'))}")
    if name == "model" and (not isinstance(entry, dict) or set(entry) != {"choices"}):
        raise UserError(f"{where}: the model is searched by choices = [...] over {', '.join(MODELS)}; got {entry!r}")
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a table with low/high or choices, got {entry!r}")
    unknown = set(entry) - SEARCH_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected some of {', '.join(sorted(SEARCH_KEYS))}")
    if not set(models) & set(PARAMS[name].models):
        raise UserError(f"{where}: {name!r} does not apply to model {' or '.join(map(repr, models))}; it applies to "
                        f"{', '.join(PARAMS[name].models)}")
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices or set(entry) != {"choices"}:
            raise UserError(f"{where}: choices must be a non-empty list and stand alone, got {choices!r}")
        return {"choices": [coerce(name, c, where) for c in choices]}
    if "low" not in entry or "high" not in entry:
        raise UserError(f"{where}: expected both 'low' and 'high' (or 'choices')")
    if PARAMS[name].type not in (int, float):
        raise UserError(f"{where}: {name!r} takes 'choices', not a range")
    low, high = coerce(name, entry["low"], where), coerce(name, entry["high"], where)
    if low >= high:
        raise UserError(f"{where}: inverted range low={low!r} >= high={high!r}; expected low < high")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log={log!r} has the wrong type; expected true or false")
    if log and low <= 0:
        raise UserError(f"{where}: log scale needs low > 0, got low={low!r}")
    result = {"low": low, "high": high, "log": log}
    if "step" in entry:
        result["step"] = coerce(name, entry["step"], where)
    return result
