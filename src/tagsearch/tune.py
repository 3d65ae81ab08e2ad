"""``tagsearch tune DATA``: from a file of posts to the best tagger, in one command and one time budget.

1. The study's spec: ``studies/tagger.toml``'s space (every model kind; those that cannot run here
   are left out, with a line saying why) on DATA, with the metric and the budget, written to
   ``storage/<study>.toml`` (beside a local storage file), where ``retrain``, ``dashboard`` and a
   later ``tune`` of the same study read it.
2. The search: create the study (trial 0 the seed's dense configuration, then each kind's own
   defaults) or resume it, and run W worker processes as ``tagsearch launch`` does until the study's
   deadline, now + ``--time``. Ctrl-C once stops the search (the deadline becomes now: running trials
   end at their next epoch and count) and goes on to step 3; a second Ctrl-C stops everything.
3. The candidates (``results.candidates``): the best trial of each kind retrained, the tuned
   baselines and a greedy ensemble of them, each a results folder under ``results/<study>.candidates/``;
   the one best on validation becomes the results folder (``results/<study>/``, whatever its kind:
   ``results.deliver``), with ``compare.md`` (every candidate) and the verdict: what was chosen and
   why (each candidate's validation value), the test figures, and the ``predict`` command
   (``verdict.md`` in it too).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tagsearch.data.builtin import BUILTIN_DATA
from tagsearch.errors import UserError
from tagsearch.learn.metrics import DIRECTIONS
from tagsearch.log import log, warning
from tagsearch.results import compare as comparing
from tagsearch.results.folder import METRICS, markdown_table, read_config, read_json
from tagsearch.results.candidates import Candidate, gather
from tagsearch.results.deliver import deliver
from tagsearch.runtime import deadline as deadlines
from tagsearch.runtime.launch import clock_text, cpu_count
from tagsearch.runtime.progress import UNLIMITED, progress
from tagsearch.runtime.location import Location
from tagsearch.study import memory, workers
from tagsearch.study.search import embedding_dir
from tagsearch.study.spec import (DEFAULT_STORAGE, EMBEDDING_MODELS, ENCODER_MODELS, PARAMS, Spec, check_study_name,
                                  load_spec, parse_spec)
from tagsearch.study.specfile import write_text

SPEC = "tagger.toml"
DEFAULT_TIME = 600.0  # seconds of search when --time is not given
MAX_CPU_WORKERS = 8
RETRAIN_SHARE = 0.25  # of the search's time a kind's best trial may have trained and be retrained unless best


@dataclass
class Tuned:
    """What ``tune`` left: the study, its spec, the results folder, the comparison and the verdict."""

    study: str
    spec: Path
    folder: Path
    comparison: Path
    verdict: str
    seconds: float
    search_seconds: float
    stopped: bool  # Ctrl-C ended the search before its deadline
    summaries: tuple[str, ...] = ()  # each retrained network's closing summary, for the command to print


def tune(data: str, *, time_budget: float = DEFAULT_TIME, workers_count: int | None = None, devices: str = "auto",
         metric: str | None = None, out: str | Path | None = None, storage: str | None = None,
         study_name: str | None = None, text_columns: tuple[str, ...] = (), tags_column: str | None = None,
         top_k: int | None = None, n_trials: int | None = None, models: tuple[str, ...] | None = None,
         spec: str | Path | None = None, max_epochs: int | None = None, memory_limit: int | None = None) -> Tuned:
    """``tagsearch tune``: search ``spec`` (default studies/tagger.toml) on the posts file ``data``
    ("builtin": the synthetic corpus) for ``time_budget`` seconds with ``workers_count`` worker
    processes on ``devices`` ("auto": every visible GPU, else the CPU), retrain the best trial into
    ``out`` (default results/<study>), compare it with the tuned baselines and return the verdict.
    ``models``: the kinds to search (default: the spec's, less those that cannot run here);
    ``n_trials``: also stop after this many finished trials; ``max_epochs``: cap every trial's epochs;
    ``memory_limit``: bytes each worker may hold (default ``memory.worker_share``)."""
    start = time.monotonic()
    if not time_budget > 0:
        raise UserError(f"--time {time_budget!r} is out of range; expected a duration > 0, like 90s, 10m, 2h")
    path, searched = data_path(data), spec_to_search(spec, models)  # the study's spec is made from it, as a value
    base = Path(searched.path)
    one_kind = not spec and base.name != SPEC  # --models KIND with studies/KIND.toml: its own study, KIND-posts
    default_name = default_study_name(path).replace("tagger-", f"{base.stem}-" if one_kind else "tagger-", 1)
    name, kinds = check_study_name(study_name or default_name), usable_models(searched, models)
    where = Location.of(storage or searched.storage)  # parsed once, here
    spec_path = where.folder / f"{name}.toml"
    # the written spec, the log and the verdict show the URL without its password (workers get it privately)
    study_spec = for_study(searched, name=name, storage=where.masked, data=path, metric=metric, time_budget=time_budget,
                           models=kinds, n_trials=n_trials, text_columns=text_columns, tags_column=tags_column,
                           top_k=top_k, max_epochs=max_epochs, path=spec_path)
    write_text(study_spec.to_toml(f"Written by 'tagsearch tune' from {base}: its space on {path}; retrain, dashboard "
                                  f"and a later 'tagsearch tune' of this study read it."), spec_path)
    again = resume_command(data, name, default_name, where, kinds, () if one_kind else searched.models, metric)
    device_list, count = pick_devices(devices, workers_count)
    log(f"tune: study {name!r} in {where.masked}, {', '.join(kinds)}, {count} worker(s) on {device_list}, "
        f"{clock_text(time_budget)} of search (Ctrl-C: stop searching and keep the best so far)")

    # 1. Search until the deadline (or a Ctrl-C brings it forward).
    search_start, wall_start = time.monotonic(), deadlines.clock()
    code = workers.launch(study_spec, storage=where, study_name=name, workers=count, devices=device_list,
                          n_trials=n_trials or UNLIMITED, time_budget=time_budget, new_session=True,
                          memory_limit=memory_limit)
    search_seconds = time.monotonic() - search_start
    if code == 130:
        raise KeyboardInterrupt
    counts = trial_counts(study_spec, where, name)
    if not counts["progress"].complete:
        raise UserError(f"no trial of study {name!r} completed in {clock_text(search_seconds)} of search"
                        f"{' (a worker crashed: see its log above)' if code else ''}; expected a longer --time")
    if code != 0:
        warning("tune: a worker crashed (see its log above); retraining the best trial the others found")

    # 2. The candidates (the best network of each kind retrained, the tuned baselines, their greedy
    #    ensemble); the best on validation delivered; every candidate compared; the verdict.
    folder = Path(out or Path("results") / name)
    found = gather(study_spec, where, name, folder.with_name(folder.name + ".candidates"), study_spec.metric,
                   # the encoder baseline only where the search paid for the encodings (the plan kept them)
                   bool(set(kinds) & set(EMBEDDING_MODELS)) and not counts.get("planner"), embedding_dir(where),
                   data=path, retrain_seconds=RETRAIN_SHARE * search_seconds)
    chosen = deliver(found, study_spec.metric, folder)
    log(f"\n== delivered {chosen.name} to {folder}/; comparing the candidates ==")
    table = comparing.compare_table([c.folder for c in found], baselines=False)
    comparison = folder / "compare.md"
    comparing.write_text(comparison, comparing.render(table.groups, table.notes))
    stopped = counts["deadline"] is not None and counts["deadline"] < wall_start + time_budget - 1  # Ctrl-C moved it
    text = verdict(folder, table, counts, search_seconds, stopped, again, spec_path, found, chosen)
    comparing.write_text(folder / "verdict.md", text)
    return Tuned(name, spec_path, folder, comparison, text, time.monotonic() - start, search_seconds, stopped,
                 tuple(c.summary for c in found if c.summary))


# ---------------------------------------------------------------------------------------------
# The study's spec


def studies_dir() -> Path:
    """studies/ in the working directory, else beside the package's source tree."""
    for folder in (Path("studies"), Path(__file__).resolve().parents[2] / "studies"):
        if (folder / SPEC).is_file():
            return folder
    raise UserError(f"cannot find studies/{SPEC}; run tagsearch from the tagsearch checkout, or pass a spec")


OWN_SPEC_KINDS = ("finetune",)  # kinds whose search alone takes studies/KIND.toml (one validation split, wider ranges)


def spec_to_search(spec: str | Path | None, models: tuple[str, ...] | None) -> Spec:
    """``spec``; else, for ``--models KIND`` of a kind searched alone by its own spec (finetune: one
    validation split instead of tagger.toml's folds, every layer count), ``studies/KIND.toml``; else
    ``studies/tagger.toml``: read once, here."""
    base = Path(spec) if spec else studies_dir() / SPEC
    if not spec and models and len(set(models)) == 1 and models[0] in OWN_SPEC_KINDS:
        own = studies_dir() / f"{models[0]}.toml"
        base = own if own.is_file() else base
    if not base.is_file():
        raise UserError(f"study spec {str(base)!r} not found; expected a TOML file such as studies/{SPEC}")
    return load_spec(base)


def data_path(data: str) -> str:
    """DATA as the spec records it: "builtin", or the file's absolute path (workers and results
    find it from any directory)."""
    if data == BUILTIN_DATA:
        return data
    if not Path(data).is_file():
        raise UserError(f"data file {data!r} not found; expected a posts file (.csv .tsv .parquet .jsonl .joblib) "
                        f"or 'builtin'")
    return str(Path(data).resolve())


def default_study_name(path: str) -> str:
    """``tagger-<file stem>``: one study per data set (a study refuses other data)."""
    stem = "builtin" if path == BUILTIN_DATA else Path(path).stem
    return "tagger-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "data")


def usable_models(spec, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The kinds to search: ``requested`` (each checked), else the spec's less the encoder kinds
    when their encoder cannot be loaded here (said in one line)."""
    from tagsearch.learn.encoder import resolve_model

    if requested:
        bad = [m for m in requested if m not in spec.models]
        if bad:
            raise UserError(f"--models: {bad[0]!r} is not searched by {spec.path}; expected some of "
                            f"{', '.join(spec.models)}")
        return tuple(dict.fromkeys(requested))
    kinds = spec.models
    if set(kinds) & set(ENCODER_MODELS):
        try:
            resolve_model(next(p["encoder"] for p in [spec.defaults, *spec.early] if p["model"] in ENCODER_MODELS))
        except UserError as exc:
            left_out = [m for m in kinds if m in ENCODER_MODELS]
            kinds = tuple(m for m in kinds if m not in ENCODER_MODELS)
            log(f"tune: leaving out {', '.join(left_out)}: {exc}")
            if not kinds:
                raise UserError(f"{spec.path} searches only encoder kinds, and {exc}") from None
    return kinds


def for_study(spec: Spec, *, name: str, storage: str, data: str, metric: str | None, time_budget: float,
              models: tuple[str, ...], n_trials: int | None = None, text_columns: tuple[str, ...] = (),
              tags_column: str | None = None, top_k: int | None = None, max_epochs: int | None = None,
              path: str | Path | None = None) -> Spec:
    """``spec`` for this run (at ``path``, where it is written): its study, data and budget,
    searching ``models`` only. Trial 0 stays ``[defaults]`` if its model is kept, else the first kept
    ``[defaults.KIND]`` takes its place; a ``[search.X]`` that applies to no kept model goes."""
    if metric is not None and metric not in DIRECTIONS:
        raise UserError(f"--metric {metric!r}; expected one of {', '.join(DIRECTIONS)}")
    study = dict(name=name, storage=storage, n_trials=n_trials or UNLIMITED, time_budget=float(time_budget),
                 timeout=None, direction=None, **({"metric": metric} if metric else {}))
    data_keys = {"path": data, **{key: value for key, value in (("text_columns", list(text_columns)),
                                                                ("tags_column", tags_column), ("top_k", top_k))
                                  if value}}
    training = {"training": {"max_epochs": max_epochs}} if max_epochs else {}
    defaults = spec.table.get("defaults", {})
    flat = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in defaults.items() if isinstance(v, dict) and k in models}
    if flat.get("model", "dense") not in models:  # trial 0's kind is left out: the first kept kind's defaults
        first = next((k for k in tables), None) or models[0]
        flat = {**tables.pop(first, {}), "model": first}
    search = {k: v for k, v in spec.table.get("search", {}).items() if set(PARAMS[k].models) & set(models)}
    search["model"] = {"choices": list(models)}
    return spec.replace(path=path or spec.path, **study, data=data_keys, **training, defaults={**flat, **tables},
                        search=search)


def tune_spec(raw: dict, **settings) -> dict:
    """``for_study`` of a spec as tomllib reads it, as such a table."""
    return for_study(parse_spec(raw, "spec"), **settings).table


def pick_devices(devices: str, count: int | None) -> tuple[str, int]:
    """``"auto"`` → every visible GPU (one worker each), else ``"cpu"`` (a worker per core, up to
    ``MAX_CPU_WORKERS`` and as many as the machine's memory holds: ``memory.workers_fitting``);
    ``count`` overrides the number of workers."""
    if devices.strip().lower() == "auto":
        import torch

        gpus = torch.cuda.device_count()
        devices = ",".join(str(i) for i in range(gpus)) if gpus else "cpu"
    ids = workers.parse_devices(devices)
    default = memory.workers_fitting(min(MAX_CPU_WORKERS, cpu_count())) if ids == ["cpu"] else len(ids)
    return devices, count or default


# ---------------------------------------------------------------------------------------------
# The verdict


def trial_counts(spec: Spec, url: str | Location, name: str) -> dict:
    """Finished trials per kind, the study's counts (``runtime.progress``) and its deadline."""
    import optuna

    from tagsearch.study import search

    study = search.load_study(spec, url, name)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    kinds = Counter(t.params.get("model") or t.user_attrs.get("model", "?")
                    for t in study.get_trials(deepcopy=False, states=finished))
    plan = study.user_attrs.get("planner:encoding") or {}  # study.objective.ENCODING_PLAN
    finetune = study.user_attrs.get("planner:finetune") or {}  # study.objective.FINETUNE_PLAN
    return {"kinds": dict(kinds), "progress": progress(study), "deadline": deadlines.recorded(study),
            "planner": None if plan.get("included", True) else plan.get("note"),
            "planner_finetune": None if finetune.get("included", True) else finetune.get("note")}


def resume_command(data: str, name: str, default_name: str, where: Location, kinds: tuple[str, ...],
                   all_kinds: tuple[str, ...], metric: str | None) -> str:
    """The ``tagsearch tune`` line that resumes this study (its options where they differ from the defaults)."""
    line = ["tagsearch", "tune", data, "--time", "30m"]
    line += ["--study-name", name] if name != default_name else []
    line += ["--storage", where.masked] if where.url != DEFAULT_STORAGE else []
    line += ["--models", ",".join(kinds)] if set(kinds) != set(all_kinds) else []
    line += ["--metric", metric] if metric else []
    return " ".join(line)


def delivered_line(config: dict) -> str:
    """What the results folder holds, in one line of the verdict."""
    kind = config.get("kind", "network")
    if kind == "baseline":
        return f"the tuned **{config['name']}** ({config['summary']})"
    if kind == "ensemble":
        return f"a greedy **ensemble** of {len(config['members'])} candidates ({config['summary']})"
    return f"trial {config['trial']}, a **{config['model']}** network — {comparing.format_params(config['params'])}"


def verdict(folder: Path, table: comparing.Table, counts: dict, search_seconds: float, stopped: bool,
            again: str, spec_path: Path, found: list[Candidate], chosen: Candidate) -> str:
    """The few lines a user reads first: what was delivered and why, how it does on test, how to use it."""
    config, figures = read_config(folder), read_json(folder / METRICS, "metrics file")
    metric, rows = table.groups[0]
    done = counts["progress"]
    per_kind = ", ".join(f"{k} {n}" for k, n in sorted(counts["kinds"].items(), key=lambda kv: -kv[1]))
    values = ", ".join(f"{c.name} {c.validation_value:.4f}" for c in found)
    lines = ["# tagsearch tune: verdict", "",
             f"Searched {clock_text(search_seconds)}{' (stopped by Ctrl-C)' if stopped else ''}: {done.finished} trials "
             f"finished ({per_kind}; {done.pruned} of them pruned{f'; {done.failed} failed' if done.failed else ''}).",
             *[f"Planner: {counts[key]}." for key in ("planner", "planner_finetune") if counts.get(key)],
             f"Delivered: {delivered_line(config)}.",
             f"Why: the best validation {metric} ({DIRECTIONS[metric]}d; out of fold, thresholds cross-fitted) of "
             f"the {len(found)} candidates: {values}. A tie keeps the earlier; test figures chose nothing.", ""]
    headers = ["candidate", "what", f"validation {metric}", "test Hamming", "test micro-F1", "test macro-F1",
               "test P@1", "test R@1"]
    what = {c.name: c.description for c in found}
    body = [[(f"**{r.name}** (delivered)" if r.name == chosen.name else r.name), what.get(r.name, ""),
             f"{r.validation:.4f}",
             comparing.figure(r.test_hamming_loss), comparing.figure(r.test_micro_f1),
             comparing.figure(r.test_macro_f1), comparing.figure(r.test_precision_at_1),
             comparing.figure(r.test_recall_at_1)] for r in rows]
    body.append(["predicting no tag", "", "", comparing.figure(figures.get("test_hamming_loss_no_tags")), "", "", "",
                 ""])
    lines += [markdown_table(headers, body), ""]
    ours = next(r for r in rows if r.name == chosen.name)
    others = [r for r in rows if r is not ours]
    if others:
        beaten = [r.name for r in others if r.test_micro_f1 <= ours.test_micro_f1
                  and r.test_hamming_loss >= ours.test_hamming_loss]
        lines.append(f"On test (looked at once, after the choice) it is at least as good as {len(beaten)} of the "
                     f"{len(others)} other candidate(s) on both micro-F1 and Hamming loss.")
    if chosen.kind != "network":
        best_net = next((c for c in found if c.kind == "network"), None)
        if best_net is not None:
            lines.append(f"The searched networks did not win: the best of each kind is kept in "
                         f"{best_net.folder.parent}/ (a longer --time may find a better one).")
    lines += ["", f"- results: {folder}/ (metrics.json, compare.md, candidates.json, this verdict.md)",
              f"- every candidate: {found[0].folder.parent}/",
              f"- tag posts: `tagsearch predict {folder} \"How do I ...?\"` (or `--file posts.csv`, `--json`)",
              f"- search longer (the study resumes): `{again}`",
              f"- browse the study: `tagsearch dashboard {spec_path}`"]
    return "\n".join(lines) + "\n"
