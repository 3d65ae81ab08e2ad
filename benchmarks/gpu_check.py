"""One short GPU check of the fine-tuning and frozen-encoder kinds: posts/s and peak GPU memory.

A two-trial study (trial 0 the
``finetune`` defaults, trial 1 the ``encoder`` defaults) searched by two workers sharing one GPU
(``tagsearch launch --workers 2 --devices 0``), then each trial's posts/s and the GPU's peak memory
in use (``nvidia-smi``, polled). Exits non-zero when a trial does not complete, or on any error.

    python -m benchmarks run gpu_check [--data CSV] [--posts 800] [--device 0]
    nice -n 19 python -m benchmarks run gpu_check --force-cpu --posts 120   # the script's logic, on the CPU

Without a visible CUDA device it refuses (exit 2) unless ``--force-cpu`` runs the same two
workers on the CPU (no GPU figures), to check the script where no GPU is lent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ROBOTICS = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"
KINDS = ("finetune", "encoder")


def spec_text(data: Path, url: str, max_seq_length: int) -> str:
    """A two-kind spec: trial 0 the finetune defaults, trial 1 ([defaults.encoder]) the frozen encoder."""
    return f"""
[study]
name = "gpu-check"
storage = "{url}"
n_trials = 2
[sampler]
seed = 0
[pruner]
kind = "none"
[data]
path = "{data}"
top_k = 10
[training]
max_epochs = 2
patience = 2
folds = 1
device = "auto"
[defaults]
model = "finetune"
max_seq_length = {max_seq_length}
train_layers = 2
finetune_epochs = 2
hidden_layers = 0
batch_size = 32
[defaults.encoder]
max_seq_length = {max_seq_length}
hidden_layers = 1
hidden1 = 256
batch_size = 64
[search.model]
choices = ["finetune", "encoder"]
"""


class GpuMemory(threading.Thread):
    """The GPU's memory in use (MiB, ``nvidia-smi``), polled every 0.2 s; ``peak`` the largest seen."""

    def __init__(self, device: str):
        super().__init__(daemon=True)
        self.device, self.peak, self.stopped = device, None, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "-i", self.device, "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                used = int(out.stdout.strip().splitlines()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            self.peak = used if self.peak is None else max(self.peak, used)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROBOTICS) if ROBOTICS.is_file() else "builtin")
    parser.add_argument("--posts", type=int, default=800, help="posts of --data used (train + val + test)")
    parser.add_argument("--device", default="0", help="the GPU both workers share")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--force-cpu", action="store_true", help="run on the CPU to check this script")
    args = parser.parse_args(argv)

    import torch

    if not args.force_cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it where a GPU "
              "is lent, or pass --force-cpu to check the script on the CPU", file=sys.stderr)
        return 2
    import optuna
    import pandas as pd

    from tagsearch.data.builtin import BUILTIN_PATH
    from tagsearch.study import workers

    devices = "cpu" if args.force_cpu else args.device
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        source = Path(BUILTIN_PATH if args.data == "builtin" else args.data)
        data = Path(tmp) / f"posts{source.suffix}"
        if source.suffix == ".csv":
            pd.read_csv(source).head(args.posts).to_csv(data, index=False)
        else:
            shutil.copyfile(source, data)
        url = f"sqlite:///{tmp}/gpu-check.db"
        spec = Path(tmp) / "gpu-check.toml"
        spec.write_text(spec_text(data, url, args.max_seq_length), encoding="utf-8")
        memory = GpuMemory(args.device)
        if not args.force_cpu:
            memory.start()
        start = time.perf_counter()
        code = workers.launch(str(spec), storage=url, workers=2, devices=devices, n_trials=2)
        memory.stopped.set()
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name="gpu-check", storage=url)
        trials = {t.user_attrs.get("model"): t for t in study.trials}
        posts = study.user_attrs["posts"]["train"]
    print(f"gpu_check on {'the CPU (--force-cpu)' if args.force_cpu else f'GPU {args.device}'}: "
          f"2 workers, {args.posts} posts ({posts} training), {args.max_seq_length} tokens, "
          f"launch exit {code}, {seconds:.0f} s, torch {torch.__version__}")
    failed = code != 0
    for kind in KINDS:
        trial = trials.get(kind)
        if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
            state = "missing" if trial is None else trial.state.name
            reason = "" if trial is None else trial.user_attrs.get("fail_reason", "")
            print(f"  {kind}: {state} {reason}")
            failed = True
            continue
        epochs, seconds = trial.user_attrs["epochs_run"], trial.user_attrs["train_seconds"]
        print(f"  {kind}: {posts * epochs / seconds:8.1f} posts/s ({epochs} epoch(s) of {posts} posts in "
              f"{seconds:.1f} s, encoding included), val {trial.value:.4f}, on {trial.user_attrs['device']}")
    if not args.force_cpu:
        print(f"  peak GPU memory in use: {'unknown (no nvidia-smi)' if memory.peak is None else f'{memory.peak} MiB'}")
    print("gpu_check: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
