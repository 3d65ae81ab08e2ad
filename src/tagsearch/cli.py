"""The ``tagsearch`` command line: argument parsing, and per command a small function that turns
the parsed arguments into keyword arguments for one library function (the Python API, api.py) and
prints what it returns. ``train`` → ``api.train_one``, ``data synth`` → ``data.synth.write_corpus``,
``dashboard`` → ``study.dashboard.serve``, ``retrain`` → ``results.retrain.retrain_trial``,
``predict`` → ``results.predict.tag_posts``, ``compare`` → ``results.compare.compare``, ``demo`` →
``demo.run_demo``, ``tune`` → ``tune.tune``; ``worker``/``launch`` → ``study.workers.run_worker``/``launch``, ``storage-proxy`` → ``runtime.proxy.serve``.
Libraries are imported inside the functions, so ``tagsearch --version`` loads neither torch nor
optuna. A ``UserError`` anywhere ends the program with one ``error:`` line on stderr and exit code 2.
Messages go through the ``tagsearch`` logger (log.py) on stderr; ``-q`` keeps its warnings only,
``-v`` adds its debug lines. What a command returns (a verdict, tags, a table) is printed on stdout.
"""

from __future__ import annotations

import argparse
import sys

from tagsearch import __version__
from tagsearch.data.builtin import BUILTIN_POSTS
from tagsearch.errors import UserError, exit_code

class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line (exit 2) like every other mistake."""

    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")


def positive(kind: type, noun: str, expected: str):
    """An argparse type: ``kind(text)``, which must be > 0."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {expected}")
        return value

    return convert


positive_int = positive(int, "an integer", "an integer >= 1")
positive_float = positive(float, "a number", "a number > 0")
UNITS = {"s": 1, "m": 60, "h": 3600}


def memory_size(text: str) -> int:
    """An argparse type: ``2G``, ``1500M`` → bytes (``study.memory.parse_memory``)."""
    from tagsearch.study.memory import parse_memory

    return parse_memory(text)


MEMORY_HELP = ("memory each worker may hold, e.g. 2G: a trial whose models would not fit is pruned before it "
               "allocates (default: the machine's memory less 20%%, shared among the workers, at most 2G each)")


def duration(text: str) -> float:
    """An argparse type: ``90s``, ``10m``, ``2h`` or plain seconds (``600``, ``1.5h``) → seconds > 0."""
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in UNITS else (text, "s")
    try:
        seconds = float(number) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; expected seconds or a number with "
                                         f"s, m or h, like 90s, 10m, 2h") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected a duration > 0, like 90s, 10m, 2h")
    return seconds


def model_list(text: str) -> tuple[str, ...]:
    """An argparse type: ``tfidf,encoder_tfidf`` → the model kinds, each checked."""
    from tagsearch.study.spec import MODELS

    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [k for k in kinds if k not in MODELS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"{(bad or [text])[0]!r} is not a model kind; expected a comma-separated "
                                         f"list of {', '.join(MODELS)}")
    return kinds


def study_name(text: str) -> str:
    """An argparse type: a study name that can also name its results folder (``spec.check_study_name``)."""
    from tagsearch.study.spec import check_study_name

    try:
        return check_study_name(text, "--study-name")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def storage_url(args: argparse.Namespace) -> str | None:
    """--storage, else the TAGSEARCH_STORAGE environment variable (a URL with a password stays off
    command lines: launch hands it to its workers so), else None (the spec's)."""
    import os

    from tagsearch.runtime.location import STORAGE_ENV

    return args.storage or os.environ.get(STORAGE_ENV) or None


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (override the spec's [data] section)")
    group.add_argument("--data", metavar="PATH", help="posts file: .csv .tsv .parquet .jsonl .joblib")
    group.add_argument("--text-column", action="append", dest="text_columns", metavar="COL",
                       help="text column(s), joined in order (default: Title+Body, content, text)")
    group.add_argument("--tags-column", metavar="COL", help="tags column (default: Tags, tags, Tag_Number)")
    group.add_argument("--top-k", type=positive_int, metavar="K", help="keep the K most frequent tags")


def add_study_options(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: $TAGSEARCH_STORAGE, else the "
                                                         "spec's)")
    parser.add_argument("--study-name", type=study_name, metavar="NAME", help="study name (default: the spec's)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tagsearch", description="Hyperparameter studies for multi-label StackExchange taggers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("-q", "--quiet", action="store_true", help="show only warnings and errors on stderr")
    chatter.add_argument("-v", "--verbose", action="store_true", help="also show debug messages on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", metavar="ACTION",
                                                                       parser_class=Parser)
    data.required = True
    synth = data.add_parser("synth", help="write the built-in synthetic corpus (Kaggle CSV layout)")
    synth.add_argument("--out", required=True, metavar="PATH")
    synth.add_argument("--posts", type=positive_int, default=BUILTIN_POSTS, metavar="N")
    synth.add_argument("--seed", type=int, default=0, metavar="S")
    synth.set_defaults(command="synth")

    train = sub.add_parser("train", help="train one configuration (no search)")
    train.add_argument("spec", metavar="SPEC", help="study spec, e.g. studies/dense.toml")
    add_data_options(train)
    train.add_argument("--param", action="append", metavar="KEY=VALUE", help="override a hyperparameter")
    train.add_argument("--epochs", type=positive_int, metavar="N", help="max epochs (default: the spec's)")
    train.add_argument("--patience", type=positive_int, metavar="P", help="early-stopping patience")
    train.add_argument("--no-early-stop", action="store_true", help="train all epochs")
    train.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N (default: the spec's)")
    train.add_argument("--threads", type=positive_int, metavar="T", help="torch CPU threads")
    train.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    worker = sub.add_parser("worker", help="join (or create) a study and run trials until its budget is met")
    worker.add_argument("spec", metavar="SPEC")
    add_study_options(worker)
    worker.add_argument("--n-trials", type=positive_int, metavar="N", help="finished trials for the whole study")
    worker.add_argument("--timeout", type=positive_float, metavar="S", help="stop starting trials after S seconds")
    worker.add_argument("--time", type=duration, dest="time_budget", metavar="T",
                        help="time for the whole study (10m, 90s, 2h): sets its deadline unless it has one")
    worker.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N")
    worker.add_argument("--threads", type=positive_int, metavar="T", help="torch CPU threads")
    worker.add_argument("--memory", type=memory_size, metavar="SIZE", help=MEMORY_HELP)

    launch = sub.add_parser("launch", help="start W workers on one study and show live progress")
    launch.add_argument("spec", metavar="SPEC")
    add_study_options(launch)
    launch.add_argument("--workers", type=positive_int, default=1, metavar="W")
    launch.add_argument("--devices", default="cpu", metavar="LIST", help="'cpu' or GPU ids like 0,1,2,3")
    launch.add_argument("--n-trials", type=positive_int, metavar="N", help="finished trials for the whole study")
    launch.add_argument("--timeout", type=positive_float, metavar="S")
    launch.add_argument("--time", type=duration, dest="time_budget", metavar="T",
                        help="time for the whole study (10m, 90s, 2h): sets its deadline unless it has one")
    launch.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                        help="place the workers on a Ray cluster: auto (this machine's), local, or HOST:PORT (docs/ray.md)")
    launch.add_argument("--gpus-per-worker", type=float, metavar="G",
                        help="--ray: GPUs per worker (default 1 where the cluster has GPUs, else 0: CPU workers)")
    launch.add_argument("--cpus-per-worker", type=positive_float, default=1.0, metavar="C",
                        help="--ray: CPUs per worker, also its torch threads (default 1)")
    launch.add_argument("--memory", type=memory_size, metavar="SIZE", help=MEMORY_HELP)

    tune = sub.add_parser("tune", help="from a posts file to the best tagger: search every model kind for a "
                                       "time budget, retrain the best, compare with the baselines")
    tune.add_argument("data", metavar="DATA", help="posts file (.csv .tsv .parquet .jsonl .joblib), or 'builtin'")
    tune.add_argument("--time", type=duration, dest="time_budget", default=600.0, metavar="T",
                      help="time for the search (10m, 90s, 2h; default 10m); retrain and baselines come after it")
    tune.add_argument("--workers", type=positive_int, metavar="W",
                      help="worker processes (default: one per GPU, else one per core up to 8, as many as "
                           "the memory holds)")
    tune.add_argument("--memory", type=memory_size, metavar="SIZE", help=MEMORY_HELP)
    tune.add_argument("--devices", default="auto", metavar="LIST",
                      help="'auto' (every visible GPU, else cpu), 'cpu' or GPU ids like 0,1,2,3")
    tune.add_argument("--metric", choices=["hamming_loss", "micro_f1", "macro_f1"],
                      help="what the search optimises on validation (default: the spec's, hamming_loss)")
    tune.add_argument("--out", metavar="DIR", help="results directory (default: results/<study>)")
    group = tune.add_argument_group("data")
    group.add_argument("--text-column", action="append", dest="text_columns", metavar="COL",
                       help="text column(s), joined in order (default: Title+Body, content, text)")
    group.add_argument("--tags-column", metavar="COL", help="tags column (default: Tags, tags, Tag_Number)")
    group.add_argument("--top-k", type=positive_int, metavar="K", help="keep the K most frequent tags (default 10)")
    tune.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: $TAGSEARCH_STORAGE, else "
                                                       "sqlite:///storage/tagsearch.db)")
    tune.add_argument("--study-name", type=study_name, metavar="NAME", help="study name (default: tagger-<file stem>); an existing "
                                                           "study on the same data resumes")
    tune.add_argument("--n-trials", type=positive_int, metavar="N", help="also stop after N finished trials")
    tune.add_argument("--models", type=model_list, metavar="LIST",
                      help="kinds to search, e.g. tfidf,encoder_tfidf (default: every kind that can run here)")
    tune.add_argument("--spec", metavar="SPEC", help="the space to search (default: studies/tagger.toml)")
    tune.add_argument("--max-epochs", type=positive_int, metavar="N", help="cap every trial's epochs")

    dashboard = sub.add_parser("dashboard", help="browse studies with optuna-dashboard")
    dashboard.add_argument("spec", nargs="?", metavar="SPEC")
    dashboard.add_argument("--storage", metavar="URL")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)

    proxy = sub.add_parser("storage-proxy", help="serve a study database to many workers over gRPC (grpc://HOST:PORT)")
    proxy.add_argument("--storage", required=True, metavar="URL", help="the database behind it, e.g. postgresql://...")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=13000)
    proxy.add_argument("--token-file", metavar="PATH", help="a 0600 file holding the token every client must bear "
                                                            "(default: $TAGSEARCH_PROXY_TOKEN); clients read "
                                                            "TAGSEARCH_PROXY_TOKEN or TAGSEARCH_PROXY_TOKEN_FILE")
    proxy.add_argument("--insecure", action="store_true",
                       help="serve a non-loopback --host without a token (anyone who reaches it owns the study)")

    retrain = sub.add_parser("retrain", help="retrain a study's best trial and evaluate it on the test split")
    retrain.add_argument("spec", metavar="SPEC")
    add_study_options(retrain)
    retrain.add_argument("--out", metavar="DIR", help="results directory (default: results/<study>)")
    retrain.add_argument("--trial", type=int, metavar="N", help="trial number (default: the best)")
    retrain.add_argument("--device", metavar="DEV")
    retrain.add_argument("--threads", type=positive_int, metavar="T", help="torch CPU threads (default 1)")
    retrain.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                         help="train again on training + validation before the test (default: [training] refit)")

    predict = sub.add_parser("predict", help="tag posts with a retrained model")
    predict.add_argument("results", metavar="DIR")
    predict.add_argument("texts", nargs="*", metavar="TEXT")
    predict.add_argument("--file", metavar="PATH", help="one post per line, or a CSV with a text column")
    predict.add_argument("--json", action="store_true", help="one JSON object per line with tags and scores")

    compare = sub.add_parser("compare", help="compare results directories and the tuned linear baselines")
    compare.add_argument("results", nargs="*", metavar="DIR")
    compare.add_argument("--out", default="results/compare.md", metavar="PATH")
    compare.add_argument("--no-encoder-baseline", dest="encoder_baseline", action="store_false",
                         help="leave out the TF-IDF + encoder embedding baseline (it encodes every post once)")

    demo = sub.add_parser("demo", help="tagsearch tune on the built-in corpus (dense and TF-IDF kinds): about 5 minutes")
    demo.add_argument("--time", type=duration, dest="time_budget", default=240.0, metavar="T",
                      help="time for the search (default 4m)")
    demo.add_argument("--trials", type=positive_int, metavar="N", help="also stop after N finished trials")
    demo.add_argument("--posts", type=positive_int, default=BUILTIN_POSTS, metavar="N", help="size of the synthetic corpus")
    demo.add_argument("--workers", type=positive_int, default=2, metavar="W")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but ``predict DIR TEXT --json MORE TEXT`` keeps every TEXT: argparse stops
    filling a positional list at the first option, so the texts after it come back as extras."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command == "predict":
        texts = [e for e in extras if not e.startswith("-")]
        args.texts, extras = args.texts + texts, [e for e in extras if e.startswith("-")]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


# ---------------------------------------------------------------------------------------------
# Commands: parsed arguments → keyword arguments → one library call → output


def data_options(args: argparse.Namespace):
    """``--data``, ``--text-column``, ``--tags-column`` and ``--top-k`` as ``DataOptions``."""
    from tagsearch.data.corpus import DataOptions

    return DataOptions(args.data, tuple(args.text_columns or ()), args.tags_column, args.top_k)


def synth_command(args: argparse.Namespace) -> int:
    from tagsearch.data.synth import write_corpus
    from tagsearch.log import log

    try:
        count = write_corpus(args.out, n_posts=args.posts, seed=args.seed)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    log(f"wrote {count} synthetic posts to {args.out}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    import json

    import torch

    from tagsearch import api
    from tagsearch.learn.train import summary_record
    from tagsearch.log import log
    from tagsearch.study.spec import parse_overrides

    spec, overrides = api.load_spec(args.spec), parse_overrides(args.param)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = api.load_corpus(spec, data_options(args))
    log(f"data: {corpus.source}: {corpus.summary()}")

    def show(epoch, record):
        print(f"epoch {epoch:3d}  loss {record.train_loss:.4f}  val_hamming {record.value('hamming_loss'):.4f}  "
              f"val_micro_f1 {record.value('micro_f1'):.4f}  ({record.thresholds} thresholds)  "
              f"{record.seconds:.2f}s", flush=True)

    result = api.train_one(spec, corpus, epochs=args.epochs, patience=args.patience,
                           early_stop=not args.no_early_stop, device=args.device,
                           on_epoch=None if args.json else show, keep_features=False, **overrides)
    record = summary_record(result, corpus, spec.params(overrides))
    if args.json:
        print(json.dumps(record))
    else:
        print(f"best epoch {record['best_epoch']} by val {record['metric']}: val_hamming "
              f"{record['best_val_hamming_loss']:.4f}  "
              f"val_micro_f1 {record['val_micro_f1']:.4f}  val_macro_f1 {record['val_macro_f1']:.4f}")
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from tagsearch.study.workers import run_worker

    return run_worker(args.spec, data=data_options(args), storage=storage_url(args), study_name=args.study_name,
                      n_trials=args.n_trials, timeout=args.timeout, time_budget=args.time_budget, device=args.device,
                      threads=args.threads, memory_limit=args.memory)


def launch_command(args: argparse.Namespace) -> int:
    from tagsearch.study.workers import launch

    return launch(args.spec, data=data_options(args), storage=storage_url(args), study_name=args.study_name,
                  workers=args.workers, devices=args.devices, n_trials=args.n_trials, timeout=args.timeout,
                  time_budget=args.time_budget, ray=args.ray, gpus_per_worker=args.gpus_per_worker,
                  cpus_per_worker=args.cpus_per_worker, memory_limit=args.memory)


def tune_command(args: argparse.Namespace) -> int:
    from tagsearch.tune import tune

    tuned = tune(args.data, time_budget=args.time_budget, workers_count=args.workers, devices=args.devices,
                 metric=args.metric, out=args.out, storage=storage_url(args), study_name=args.study_name,
                 text_columns=tuple(args.text_columns or ()), tags_column=args.tags_column, top_k=args.top_k,
                 n_trials=args.n_trials, models=args.models, spec=args.spec, max_epochs=args.max_epochs,
                 memory_limit=args.memory)
    show_tuned(tuned, "tune")
    return 0


def show_tuned(tuned, what: str) -> None:
    """The verdict of ``tune`` (or ``demo``) and how long it took, on stdout."""
    from tagsearch.durations import minutes_text

    for summary in tuned.summaries:  # each retrained network's, as 'tagsearch retrain' prints it
        print(summary)
    print(f"\n{tuned.verdict}", end="")
    print(f"\n{what} done in {minutes_text(tuned.seconds)} ({minutes_text(tuned.search_seconds)} of search)")


def storage_proxy_command(args: argparse.Namespace) -> int:
    from tagsearch.runtime.proxy import serve

    return serve(args.storage, host=args.host, port=args.port, token_file=args.token_file, insecure=args.insecure)


def dashboard_command(args: argparse.Namespace) -> int:
    from tagsearch.study.dashboard import serve

    serve(args.spec, storage=args.storage, host=args.host, port=args.port)
    return 0


def retrain_command(args: argparse.Namespace) -> int:
    from tagsearch.results.retrain import retrained, summary_text

    done = retrained(args.spec, trial=args.trial, out=args.out, data=data_options(args), storage=storage_url(args),
                     study_name=args.study_name, device=args.device, threads=args.threads, refit=args.refit)
    print(summary_text(done))
    return 0


def predict_command(args: argparse.Namespace) -> int:
    import json

    from tagsearch.results.predict import NO_TAG, load, read_posts, tag_posts

    loaded = load(args.results)
    for post in tag_posts(loaded, read_posts(args.texts, args.file, sys.stdin)):
        if args.json:
            print(json.dumps({"tags": post["tags"], "scores": {t: round(p, 6) for t, p in post["scores"].items()}}))
        else:
            print(" ".join(post["tags"]) or NO_TAG)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from tagsearch.results.compare import compare

    print(compare(args.results, out=args.out, encoder_baseline=args.encoder_baseline).read_text(encoding="utf-8"),
          end="")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from tagsearch.demo import STORAGE, run_demo

    tuned = run_demo(time_budget=args.time_budget, trials=args.trials, posts=args.posts, workers=args.workers)
    show_tuned(tuned, "demo")
    print(f"  dashboard: tagsearch dashboard --storage {STORAGE}   (then open http://127.0.0.1:8080/dashboard/)")
    return 0


# sub-command → its function here (each imports what it needs: ``tagsearch --version`` loads no torch).
COMMANDS = {
    "synth": synth_command,
    "train": train_command,
    "worker": worker_command,
    "launch": launch_command,
    "tune": tune_command,
    "dashboard": dashboard_command,
    "storage-proxy": storage_proxy_command,
    "retrain": retrain_command,
    "predict": predict_command,
    "compare": compare_command,
    "demo": demo_command,
}


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: run(parse_args(argv)))


def run(args: argparse.Namespace) -> int | None:
    """The command ``args`` names, with the ``tagsearch`` logger at the level of ``-q``/``-v``."""
    import platform

    from tagsearch.log import debug, level_for, verbosity

    with verbosity(level_for(args.quiet, args.verbose)):
        debug(f"tagsearch {__version__} on Python {platform.python_version()}: {args.command}")
        return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
