"""SASRec-style sequence ranker with candidate features and a return head.

The history input is a window of ``history_length`` item tokens (left-padded); its newest ``attention_length``
go through causal self-attention and the newest slot is the customer's state ``u``. The candidate features
(``services.ranking.features.CANDIDATE_FEATURES``: price, margin, popularity, return rate, stock, and how often,
how recently and with what share it occurs in the whole window, which is what lets the model handle repeat
purchases) are computed by the ranking service over the whole window. When built with the trained two-tower, the
model also holds a frozen copy of the retrieval stage and adds its similarity ``s`` = query(history) . item to the
features inside the graph (no request field needed: the same history gives the same score as retrieval's).

- P(purchase) = sigmoid(a * (MLP([u * e, f, e]) + w . x) + b + c * bought_before), ``x`` the standardised features
  (and ``s``), ``f`` a projection of ``x``, ``a``/``b``/``c`` a calibration fitted on validation data after training
  (1, 0 and 0 before; ``bought_before``: the candidate occurs in the history window, see ``calibrated``).
- P(return | purchase) = sigmoid(MLP([e, f, u])).

ONNX contract: see model_repository/README.md (inputs history_item_ids, candidate_item_ids, candidate_features;
outputs purchase_probability, return_probability).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from training.models.two_tower import QueryTower, TwoTower, _SelfAttention, padding_bias


class RetrievalScore(nn.Module):
    """The retrieval stage's similarity for each candidate, frozen: a copy of the two-tower's query tower and its
    item vectors (token order, row 0 = padding/unknown = zero vector). Never trained with the ranker."""

    def __init__(self, tower: TwoTower):
        super().__init__()
        self.length = tower.history_length
        self.query = QueryTower(copy.deepcopy(tower))
        vectors = tower.all_item_vectors()
        table = np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors])
        self.register_buffer("vectors", torch.from_numpy(table))
        for parameter in self.query.parameters():
            parameter.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> RetrievalScore:
        return super().train(False)  # frozen: no dropout, whatever the ranker's mode

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, C] query(newest ``length`` history tokens) . item vector, as the retrieval stage scores them."""
        query = self.query(history[:, -self.length :])
        return (self.vectors[candidates] * query[:, None, :]).sum(-1)


class CooccurrenceScore(nn.Module):
    """Item-to-item evidence for each candidate, frozen: the cosine-normalised basket co-occurrence of the training
    data (float16, token order) summed over the newest ``recent`` history slots with weights ``decay`` ** age."""

    def __init__(self, similarity: np.ndarray, recent: int = 20, decay: float = 0.9):
        super().__init__()
        items = similarity.shape[0]
        table = np.zeros((items + 1, items + 1), dtype=np.float16)
        table[1:, 1:] = similarity
        self.items, self.recent = items + 1, recent
        self.register_buffer("similarity", torch.from_numpy(table.reshape(-1)))
        self.register_buffer("weights", torch.tensor(decay ** np.arange(recent)[::-1].copy(), dtype=torch.float32))

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        recent = history[:, -self.recent :]  # [B, R]; padding (token 0) has an all-zero row
        index = recent[:, :, None] * self.items + candidates[:, None, :]  # [B, R, C]
        similarity = self.similarity[index].to(torch.float32)
        return (similarity * self.weights[-recent.shape[1] :][None, :, None]).sum(1)


class SequenceRanker(nn.Module):
    def __init__(
        self,
        num_items: int,
        num_features: int = 9,
        dim: int = 64,
        history_length: int = 200,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        feature_mean: np.ndarray | None = None,
        feature_std: np.ndarray | None = None,
        attention_length: int = 50,
        retrieval: RetrievalScore | None = None,
        cooccurrence: CooccurrenceScore | None = None,
        bought_before_column: int | None = None,
    ):
        """``bought_before_column``: the candidate feature that is > 0 when the customer bought the candidate before
        (``log_history_count``); the calibration's bought-before term reads it (see ``forward``)."""
        super().__init__()
        self.num_items, self.dim, self.history_length, self.num_features = num_items, dim, history_length, num_features
        self.attention_length = min(attention_length, history_length)
        self.retrieval, self.cooccurrence = retrieval, cooccurrence
        # Standardisation of the in-graph scores (retrieval, co-occurrence), set from training data by the trainer.
        extra = len(self.scorers())
        self.register_buffer("score_mean", torch.zeros(extra))
        self.register_buffer("score_std", torch.ones(extra))
        inputs = num_features + extra
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position = nn.Embedding(self.attention_length, dim)
        self.blocks = nn.ModuleList(_SelfAttention(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        mean = np.zeros(num_features) if feature_mean is None else feature_mean
        std = np.ones(num_features) if feature_std is None else np.maximum(feature_std, 1e-3)
        # A feature that never varied in training carried nothing the model could learn; an infinite scale makes
        # its standardised value 0 whatever serving sends (e.g. recent sales of data whose events share one day).
        if feature_std is not None:
            std = np.where(np.asarray(feature_std) < 1e-6, np.inf, std)
        self.register_buffer("feature_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("logit_scale", torch.tensor(1.0))
        self.register_buffer("logit_bias", torch.tensor(0.0))
        # Calibration's bought-before term (0 until calibrated): see ``forward``.
        self.bought_before_column = bought_before_column
        self.register_buffer("bought_before_bias", torch.tensor(0.0))
        self.features = nn.Sequential(nn.Linear(inputs, dim), nn.GELU(), nn.Linear(dim, dim))
        self.wide = nn.Linear(inputs, 1)
        self.purchase = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))
        self.returns = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        nn.init.normal_(self.item_embedding.weight, std=0.05)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def scorers(self) -> list[nn.Module]:
        return [m for m in (self.retrieval, self.cooccurrence) if m is not None]

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        history = history[:, -self.attention_length :]
        positions = torch.arange(self.attention_length, device=history.device)
        x = self.item_embedding(history) + self.position(positions)[None]
        bias = padding_bias(history, causal=True)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x[:, -1])

    def logits(
        self, history: torch.Tensor, candidates: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(purchase logits before calibration, return logits), each [B, C]."""
        user = self.user_state(history)[:, None, :].expand(-1, candidates.shape[1], -1)
        items = self.item_embedding(candidates)
        x = (features - self.feature_mean) / self.feature_std
        scorers = self.scorers()
        if scorers:
            scores = torch.stack([scorer(history, candidates) for scorer in scorers], dim=-1)
            x = torch.cat([x, (scores - self.score_mean) / self.score_std], dim=-1)
        f = self.features(x)
        purchase = self.purchase(torch.cat([user * items, f, items], dim=-1)).squeeze(-1) + self.wide(x).squeeze(-1)
        returns = self.returns(torch.cat([items, f, user], dim=-1)).squeeze(-1)
        return purchase, returns

    def forward(
        self, history_item_ids: torch.Tensor, candidate_item_ids: torch.Tensor, candidate_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        purchase, returns = self.logits(history_item_ids, candidate_item_ids, candidate_features)
        return torch.sigmoid(self.calibrated(purchase, candidate_features)), torch.sigmoid(returns)

    def calibrated(self, purchase: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The calibrated purchase logit: a * logit + b, + c for a candidate the customer bought before. The c term
        corrects what training cannot see: half its lists are discovery-shaped (only new items, so new items are
        positives more often there than on a repeat list), which leaves the ranker under-rating items bought before
        on serving's mixed lists; calibration fits c on validation customers' serving-shaped lists."""
        logit = purchase * self.logit_scale + self.logit_bias
        if self.bought_before_column is not None:
            logit = logit + self.bought_before_bias * self.bought_before(features).to(logit.dtype)
        return logit

    def bought_before(self, features: torch.Tensor) -> torch.Tensor:
        """Bool [..., C]: the candidate occurs in the history window (its ``bought_before_column`` feature > 0); all
        False for a ranker without that column. What calibration's bought-before term reads."""
        if self.bought_before_column is None:
            return torch.zeros(features.shape[:-1], dtype=torch.bool)
        return features[..., self.bought_before_column] > 0
