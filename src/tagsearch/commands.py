"""The two sub-commands that are one library call plus printing: ``tagsearch train`` (one
configuration: train.py's ``train_config``) and ``tagsearch data synth`` (synth.py's ``write_corpus``).
Their imports are lazy, so ``data synth`` does not load torch."""

from __future__ import annotations

import json

from .errors import UserError
from .log import log


def cmd_train(args) -> int:
    import torch

    from .data import load_corpus, resolve_data
    from .spec import load_spec, parse_overrides
    from .train import summary_record, train_config

    spec = load_spec(args.spec)
    params = spec.params(parse_overrides(args.param))
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(resolve_data(spec, args))
    log(f"data: {corpus.source}: {corpus.summary()}")
    patience = None if args.no_early_stop else (args.patience or spec.patience)

    def show(epoch, record):
        if not args.json:
            print(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  val_hamming {record['val_hamming_loss']:.4f}  "
                  f"val_micro_f1 {record['val_micro_f1']:.4f}  {record['seconds']:.2f}s", flush=True)

    result, _ = train_config(corpus, params, max_epochs=args.epochs or spec.max_epochs, patience=patience,
                             device=args.device or spec.device, on_epoch=show)
    record = summary_record(result, corpus, params)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"best epoch {record['best_epoch']}: val_hamming {record['best_val_hamming_loss']:.4f}  "
              f"val_micro_f1 {record['val_micro_f1']:.4f}  val_macro_f1 {record['val_macro_f1']:.4f}")
    return 0


def cmd_synth(args) -> int:
    from .synth import write_corpus

    try:
        count = write_corpus(args.out, n_posts=args.posts, seed=args.seed)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    log(f"wrote {count} synthetic posts to {args.out}")
    return 0
