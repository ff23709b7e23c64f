"""A small real sequence ranker (torch): self-attention over the history, dot product with each candidate.

This is the walking skeleton's model; the SASRec-style ranker with candidate features replaces it in the
training issue, behind the same ONNX contract (model_repository/README.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _AttentionBlock(nn.Module):
    """Pre-norm single-head self-attention + feed-forward, written out so it exports cleanly to ONNX."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) * self.scale + key_bias[:, None, :], dim=-1)
        x = x + self.dropout(self.out(weights @ v))
        return x + self.dropout(self.ff(self.norm2(x)))


class TinySequenceRanker(nn.Module):
    """Inputs: history [B, L] and candidates [B, C] as int64 item tokens (0 = padding). Output: P(purchase) [B, C]."""

    def __init__(self, num_items: int, dim: int = 32, history_length: int = 50, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.num_items, self.dim, self.history_length = num_items, dim, history_length
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position = nn.Embedding(history_length, dim)
        self.blocks = nn.ModuleList(_AttentionBlock(dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.candidate_bias = nn.Embedding(num_items + 1, 1, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        nn.init.zeros_(self.candidate_bias.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.history_length, device=history.device)
        x = self.item_embedding(history) + self.position(positions)[None]
        padding = history == 0
        # The newest slot is always attendable, so an empty history still gives finite attention weights.
        padding = torch.cat([padding[:, :-1], torch.zeros_like(padding[:, -1:])], dim=1)
        key_bias = padding.to(x.dtype) * -1e9
        for block in self.blocks:
            x = block(x, key_bias)
        return self.norm(x[:, -1])

    def logits(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        user = self.user_state(history)  # [B, D]
        items = self.item_embedding(candidates)  # [B, C, D]
        return (items @ user[:, :, None]).squeeze(-1) + self.candidate_bias(candidates).squeeze(-1)

    def logits_for_every_item(self, history: torch.Tensor) -> torch.Tensor:
        """``logits`` with every item as a candidate: [B, num_items], column i being token i + 1. One product
        with the embedding table instead of gathering a [B, num_items, D] copy of it."""
        user = self.user_state(history)  # [B, D]
        return user @ self.item_embedding.weight[1:].T + self.candidate_bias.weight[1:, 0]

    def forward(self, history_item_ids: torch.Tensor, candidate_item_ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(history_item_ids, candidate_item_ids))

    def item_vectors(self) -> torch.Tensor:
        """Embeddings of items 1..num_items (row i is token i + 1), for the retrieval index."""
        return self.item_embedding.weight[1:].detach()
