"""SASRec-style sequence ranker with candidate features and a return head.

The history (item tokens, left-padded) goes through causal self-attention; the newest slot is the customer's
state ``u``. Each candidate is its item embedding ``e`` plus a projection ``f`` of its candidate features
(``services.ranking.features.CANDIDATE_FEATURES``: price, margin, popularity, return rate, stock, and how often
and how recently it occurs in the history, which is what lets the model handle repeat purchases).

- P(purchase) = sigmoid(a * (MLP([u * e, f, e]) + w . x) + b), ``x`` the standardised features, ``a``/``b`` a
  calibration fitted on validation data after training (1 and 0 before).
- P(return | purchase) = sigmoid(MLP([e, f, u])).

ONNX contract: see model_repository/README.md (inputs history_item_ids, candidate_item_ids, candidate_features;
outputs purchase_probability, return_probability).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.models.two_tower import _SelfAttention, padding_bias


class SequenceRanker(nn.Module):
    def __init__(
        self,
        num_items: int,
        num_features: int = 7,
        dim: int = 64,
        history_length: int = 50,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        feature_mean: np.ndarray | None = None,
        feature_std: np.ndarray | None = None,
    ):
        super().__init__()
        self.num_items, self.dim, self.history_length, self.num_features = num_items, dim, history_length, num_features
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position = nn.Embedding(history_length, dim)
        self.blocks = nn.ModuleList(_SelfAttention(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        mean = np.zeros(num_features) if feature_mean is None else feature_mean
        std = np.ones(num_features) if feature_std is None else np.maximum(feature_std, 1e-3)
        self.register_buffer("feature_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("logit_scale", torch.tensor(1.0))
        self.register_buffer("logit_bias", torch.tensor(0.0))
        self.features = nn.Sequential(nn.Linear(num_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.wide = nn.Linear(num_features, 1)
        self.purchase = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))
        self.returns = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        nn.init.normal_(self.item_embedding.weight, std=0.05)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.history_length, device=history.device)
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
        f = self.features(x)
        purchase = self.purchase(torch.cat([user * items, f, items], dim=-1)).squeeze(-1) + self.wide(x).squeeze(-1)
        returns = self.returns(torch.cat([items, f, user], dim=-1)).squeeze(-1)
        return purchase, returns

    def forward(
        self, history_item_ids: torch.Tensor, candidate_item_ids: torch.Tensor, candidate_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        purchase, returns = self.logits(history_item_ids, candidate_item_ids, candidate_features)
        return torch.sigmoid(purchase * self.logit_scale + self.logit_bias), torch.sigmoid(returns)
