"""The seed notebooks' training path, re-implemented as the benchmark reference.

This is deliberately the straightforward notebook code, not tagsearch's: it is what tagsearch's
speed-ups are measured against (``benchmarks/run.py``), so keep it faithful, not fast.

Dense model (as in PyTorch's text-classification tutorial the notebooks followed):

* vocabulary: a Python ``Counter`` over the training posts' tokens, most frequent first, ``<unk>`` = 0;
* every batch is tokenised inside the ``DataLoader``'s collate function (a Python regex per post,
  a dict lookup per token), then handed to ``EmbeddingBag(mode="mean", sparse=False)`` as
  ``(flat, offsets)``;
* ``AdamW`` over every parameter, the whole embedding table included (dense gradients);
* a Hamming-distance metric object created every step (as a torchmetrics ``HammingDistance``
  would be) to log the running training Hamming loss;
* ``clip_grad_value_(10)``; ``BCEWithLogitsLoss`` with ``pos_weight`` = N / (K · count).

TF-IDF model: scikit-learn's ``TfidfVectorizer(max_features=5000)`` fitted on the training posts;
a ``Dataset`` densifies one row per sample (``X[i].toarray()``) and a ``DataLoader`` with two worker
processes stacks them into dense batches for the same MLP head.

Hyperparameters are the seed's: embedding 300, hidden 200/100, dropout 0.5, lr 1e-3, batch 128
(``benchmarks/study.py`` searches them, with AdamW's weight decay and the vectoriser's options).

Whole-process mode (what ``tagsearch train ... --epochs N --no-early-stop`` is compared with)::

    python -m benchmarks run seed_path --data storage/builtin-synth-v2-47427.csv --epochs 5 [--model tfidf]

reads the CSV with pandas, cleans each post with Python regexes (``Series.apply``), keeps the top-10
tags, splits as the notebooks did, trains, and evaluates on the validation split every epoch.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import hamming_loss
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset

SEED_PARAMS = {"embedding_dim": 300, "hidden1": 200, "hidden2": 100, "dropout": 0.5, "lr": 1e-3,
               "batch_size": 128, "max_features": 5000, "clip_value": 10.0, "threshold": 0.5, "top_k": 10}

TOKEN_RE = re.compile(r"\$\(|\.?[a-z0-9_][a-z0-9_#+]*(?:\.[a-z0-9_#+]+)*")
TAG_RE = re.compile(r"<[^>]*>")
UNK = "<unk>"


# ---------------------------------------------------------------------------------------------
# Text and labels, one post at a time


def clean_post(text: str) -> str:
    """Strip HTML, unescape entities, lowercase, tokenise; space-joined tokens."""
    text = html.unescape(TAG_RE.sub(" ", text)).lower()
    return " ".join(TOKEN_RE.findall(text))


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def load_posts(path: str, top_k: int = 10):
    """Read a Kaggle-layout CSV, clean every post, keep the ``top_k`` tags; returns (texts, Y, tags)."""
    frame = pd.read_csv(path)
    title = next(c for c in ("Title", "title") if c in frame.columns)
    body = next(c for c in ("Body", "body", "content") if c in frame.columns)
    tags_col = next(c for c in ("Tags", "tags") if c in frame.columns)
    raw = frame[title].fillna("").astype(str) + " " + frame[body].fillna("").astype(str)
    texts = raw.apply(clean_post)
    tag_lists = frame[tags_col].fillna("").astype(str).apply(lambda s: s.lower().split())
    counts = Counter(tag for tags in tag_lists for tag in set(tags))
    top = [tag for tag, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    labels = np.array([[int(tag in tags) for tag in top] for tags in tag_lists], dtype=np.float32)
    keep = (labels.sum(axis=1) > 0) & (texts.str.len() > 0).to_numpy()
    return texts[keep].tolist(), labels[keep], top


def seed_split(n_posts: int, seed: int = 42):
    """Test 20 % first, then validation 20 % of the rest (the notebooks' two train_test_split calls)."""
    rest, test = train_test_split(np.arange(n_posts), test_size=0.2, random_state=seed)
    train, val = train_test_split(rest, test_size=0.2, random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def seed_pos_weight(labels: np.ndarray) -> torch.Tensor:
    n_posts, n_tags = labels.shape
    return torch.tensor(n_posts / (n_tags * np.maximum(labels.sum(axis=0), 1.0)), dtype=torch.float32)


class HammingDistance:
    """Per-step metric object (torchmetrics-style state: error count and element count)."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.errors = torch.tensor(0.0)
        self.total = torch.tensor(0)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        preds = (probs >= self.threshold).float()
        self.errors += (preds != target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.errors / self.total


# ---------------------------------------------------------------------------------------------
# Models


def mlp_head(n_in: int, hidden1: int, hidden2: int, n_tags: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden1), nn.BatchNorm1d(hidden1), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden1, hidden2), nn.BatchNorm1d(hidden2), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden2, n_tags))


class SeedDenseModel(nn.Module):
    def __init__(self, vocab_size: int, n_tags: int, p: dict):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, p["embedding_dim"], mode="mean", sparse=False)
        self.fc = mlp_head(p["embedding_dim"], p["hidden1"], p["hidden2"], n_tags, p["dropout"])

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


class SeedTfidfModel(nn.Module):
    def __init__(self, n_features: int, n_tags: int, p: dict):
        super().__init__()
        self.fc = mlp_head(n_features, p["hidden1"], p["hidden2"], n_tags, p["dropout"])

    def forward(self, x):
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# Datasets


class TextDataset(Dataset):
    def __init__(self, texts: list[str], labels: np.ndarray):
        self.texts, self.labels = texts, labels

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], self.labels[i]


class TfidfDataset(Dataset):
    def __init__(self, matrix, labels: np.ndarray):
        self.matrix, self.labels = matrix, labels

    def __len__(self):
        return self.matrix.shape[0]

    def __getitem__(self, i):
        row = torch.tensor(self.matrix[i].toarray()[0], dtype=torch.float32)
        return row, torch.tensor(self.labels[i], dtype=torch.float32)


def build_vocab(texts: list[str]) -> dict[str, int]:
    counter = Counter()
    for text in texts:
        counter.update(tokenize(text))
    itos = [UNK] + [token for token, _ in counter.most_common()]
    return {token: i for i, token in enumerate(itos)}


def make_collate(vocab: dict[str, int]):
    def collate_batch(batch):
        label_list, text_list, offsets = [], [], [0]
        for text, labels in batch:
            ids = torch.tensor([vocab.get(token, 0) for token in tokenize(text)], dtype=torch.int64)
            text_list.append(ids)
            offsets.append(ids.size(0))
            label_list.append(labels)
        offsets = torch.tensor(offsets[:-1]).cumsum(dim=0)
        return (torch.cat(text_list), offsets), torch.tensor(np.stack(label_list), dtype=torch.float32)

    return collate_batch


# ---------------------------------------------------------------------------------------------
# Training: one object per model kind, one call per epoch (so run.py can alternate epochs)


class SeedTrainer:
    """Shared loop: train one epoch (per-step metric object), then evaluate on validation."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, labels: np.ndarray,
                 p: dict):
        self.model, self.train_loader, self.val_loader, self.p = model, train_loader, val_loader, p
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=seed_pos_weight(labels))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p.get("weight_decay", 0.01))

    def forward(self, inputs):
        return self.model(*inputs) if isinstance(inputs, (tuple, list)) else self.model(inputs)

    def train_epoch(self) -> dict:
        self.model.train()
        total_loss, total_hamming, steps = 0.0, 0.0, 0
        for inputs, labels in self.train_loader:
            self.optimizer.zero_grad()
            logits = self.forward(inputs)
            loss = self.criterion(logits, labels)
            loss.backward()
            nn.utils.clip_grad_value_(self.model.parameters(), self.p["clip_value"])
            self.optimizer.step()
            metric = HammingDistance(self.p["threshold"])
            metric.update(torch.sigmoid(logits.detach()), labels)
            total_hamming += metric.compute().item()
            total_loss += loss.item()
            steps += 1
        return {"train_loss": total_loss / max(steps, 1), "train_hamming": total_hamming / max(steps, 1)}

    def evaluate(self) -> dict:
        self.model.eval()
        preds, truth, total_loss, steps = [], [], 0.0, 0
        with torch.no_grad():
            for inputs, labels in self.val_loader:
                logits = self.forward(inputs)
                total_loss += self.criterion(logits, labels).item()
                steps += 1
                preds.append((torch.sigmoid(logits) >= self.p["threshold"]).numpy())
                truth.append(labels.numpy())
        return {"val_loss": total_loss / max(steps, 1),
                "val_hamming_loss": float(hamming_loss(np.concatenate(truth), np.concatenate(preds)))}

    def epoch(self) -> dict:
        start = time.perf_counter()
        record = {**self.train_epoch(), **self.evaluate()}
        record["seconds"] = time.perf_counter() - start
        return record


def dense_trainer(train_texts, train_labels, val_texts, val_labels, p: dict = SEED_PARAMS, seed: int = 42):
    torch.manual_seed(seed)
    vocab = build_vocab(train_texts)
    collate = make_collate(vocab)
    train_loader = DataLoader(TextDataset(train_texts, train_labels), batch_size=p["batch_size"], shuffle=True,
                              collate_fn=collate)
    val_loader = DataLoader(TextDataset(val_texts, val_labels), batch_size=p["batch_size"], shuffle=False,
                            collate_fn=collate)
    model = SeedDenseModel(len(vocab), train_labels.shape[1], p)
    return SeedTrainer(model, train_loader, val_loader, train_labels, p)


def tfidf_trainer(train_texts, train_labels, val_texts, val_labels, p: dict = SEED_PARAMS, seed: int = 42,
                  num_workers: int = 2):
    torch.manual_seed(seed)
    vectorizer = TfidfVectorizer(max_features=p["max_features"] or None, ngram_range=(1, p.get("ngram_max", 1)),
                                 min_df=p.get("min_df", 1), sublinear_tf=p.get("sublinear_tf", False))
    x_train = vectorizer.fit_transform(train_texts)
    x_val = vectorizer.transform(val_texts)
    train_loader = DataLoader(TfidfDataset(x_train, train_labels), batch_size=p["batch_size"], shuffle=True,
                              num_workers=num_workers)
    val_loader = DataLoader(TfidfDataset(x_val, val_labels), batch_size=p["batch_size"], shuffle=False,
                            num_workers=num_workers)
    model = SeedTfidfModel(x_train.shape[1], train_labels.shape[1], p)
    return SeedTrainer(model, train_loader, val_loader, train_labels, p)


TRAINERS = {"dense": dense_trainer, "tfidf": tfidf_trainer}


# ---------------------------------------------------------------------------------------------
# Whole process: load, clean, encode, train, evaluate


def whole_process(path: str, model: str, epochs: int, log=print) -> dict:
    start = time.perf_counter()
    texts, labels, tags = load_posts(path, SEED_PARAMS["top_k"])
    train, val, _ = seed_split(len(texts))
    trainer = TRAINERS[model]([texts[i] for i in train], labels[train], [texts[i] for i in val], labels[val])
    prepared = time.perf_counter()
    log(f"seed path: {len(texts)} posts, {len(tags)} tags, prepared in {prepared - start:.1f}s")
    history = []
    for epoch in range(1, epochs + 1):
        record = trainer.epoch()
        history.append(record)
        log(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  val_hamming {record['val_hamming_loss']:.4f}  "
            f"{record['seconds']:.2f}s")
    return {"model": model, "posts": len(texts), "prepare_seconds": prepared - start,
            "epoch_seconds": [r["seconds"] for r in history],
            "val_hamming_loss": [r["val_hamming_loss"] for r in history],
            "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="CSV")
    parser.add_argument("--model", choices=sorted(TRAINERS), default="dense")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    record = whole_process(args.data, args.model, args.epochs, log)
    print(json.dumps(record) if args.json else f"total {record['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
