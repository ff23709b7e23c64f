"""Trains the skeleton's :class:`TinySequenceRanker` on next-item prediction over shop event sequences.

Hold-out: each user's last interaction is the test target; training uses everything before it, so the reported
hit rate is measured on data the model never saw. Popularity (from training data only) is the baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from services.ranking.features import encode_history
from training.tiny_ranker import TinySequenceRanker

log = logging.getLogger(__name__)


#: Scores held at once by the full-ranking evaluation: a [users, items] float32 chunk of 128 MB.
EVAL_CHUNK_SCORES = 32 * 1024 * 1024


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 256
    dim: int = 32
    history_length: int = 50
    negatives: int = 8
    learning_rate: float = 3e-3
    max_examples: int = 200_000
    eval_users: int = 1000
    seed: int = 0


@dataclass
class TrainResult:
    model: TinySequenceRanker
    config: TrainConfig
    popularity: np.ndarray  # training-window counts per catalog row
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {"config": asdict(self.config), "metrics": self.metrics, "final_loss": self.losses[-1]}


def split_last(sequences: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[np.ndarray, int]]]:
    """(training sequences, [(history, held-out target)]) with each user's last interaction held out."""
    train, test = [], []
    for rows in sequences:
        if len(rows) >= 3:
            train.append(rows[:-1])
            test.append((rows[:-1], int(rows[-1])))
        else:
            train.append(rows)
    return train, test


def make_examples(
    sequences: Sequence[np.ndarray], history_length: int, max_examples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(histories [N, L] of tokens, targets [N] of tokens) from every prefix of every sequence.

    Histories are encoded by the ranking service's own ``encode_history``, so training and serving agree.
    """
    pairs = [(u, i) for u, rows in enumerate(sequences) for i in range(1, len(rows))]
    if len(pairs) > max_examples:
        pairs = [pairs[j] for j in rng.choice(len(pairs), size=max_examples, replace=False)]
    histories = np.stack([encode_history(sequences[u][:i] + 1, history_length) for u, i in pairs])
    targets = np.array([sequences[u][i] + 1 for u, i in pairs], dtype=np.int64)
    return histories, targets


def train_tiny_ranker(
    sequences: Sequence[np.ndarray], num_items: int, config: TrainConfig = TrainConfig(), progress: bool = True
) -> TrainResult:
    """``sequences`` hold catalog rows per user in time order; tokens are rows + 1."""
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    train, test = split_last(sequences)
    popularity = np.bincount(np.concatenate(train), minlength=num_items).astype(np.float32)
    histories, targets = make_examples(train, config.history_length, config.max_examples, rng)
    sampling = (popularity + 1) ** 0.75
    sampling /= sampling.sum()

    model = TinySequenceRanker(num_items, config.dim, config.history_length)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    labels = torch.zeros(1, 1 + config.negatives)
    labels[0, 0] = 1.0
    result = TrainResult(model, config, popularity)
    steps = (len(targets) + config.batch_size - 1) // config.batch_size
    bar = tqdm(total=config.epochs * steps, desc="training ranker", unit="batch", disable=not progress)
    for _epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(targets))
        for step in range(steps):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            negatives = rng.choice(num_items, size=(len(batch), config.negatives), p=sampling) + 1
            candidates = np.concatenate([targets[batch, None], negatives], axis=1)
            logits = model.logits(torch.from_numpy(histories[batch]), torch.from_numpy(candidates))
            loss = loss_fn(logits, labels.expand(len(batch), -1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            result.losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    bar.close()
    model.eval()
    result.metrics = evaluate(model, test[: config.eval_users], popularity, config.history_length)
    log.info("hold-out metrics: %s", result.metrics)
    return result


@torch.no_grad()
def evaluate(
    model: TinySequenceRanker,
    test: Sequence[tuple[np.ndarray, int]],
    popularity: np.ndarray,
    history_length: int,
    k: int = 10,
) -> dict[str, float]:
    """Full-ranking hit rate @k of the model and of training popularity on held-out last interactions."""
    if not test:
        return {}
    histories = torch.from_numpy(np.stack([encode_history(h + 1, history_length) for h, _ in test]))
    targets = np.array([t for _, t in test])
    # Users in chunks, so a chunk's [users, items] score matrix stays near EVAL_CHUNK_SCORES whatever the catalog.
    chunk = max(1, EVAL_CHUNK_SCORES // model.num_items)
    model_top = np.concatenate(
        [
            torch.topk(model.logits_for_every_item(histories[start : start + chunk]), k, dim=1).indices.numpy()
            for start in range(0, len(test), chunk)
        ]
    )
    popular_top = np.argsort(-popularity, kind="stable")[:k]
    return {
        f"hr@{k}": float(np.mean([t in row for t, row in zip(targets, model_top, strict=True)])),
        f"popularity_hr@{k}": float(np.mean(np.isin(targets, popular_top))),
        "test_users": float(len(test)),
    }
