"""Two-tower retrieval: a query tower over the recent item sequence, an item tower over id + content features.

The item tower sums an id embedding with embeddings of the title's words (hashed), the category and the price
band, so an item never bought in training (cold) still gets a vector from its content: its id is replaced by the
"unknown" id both in training (id dropout) and at export. The query tower encodes the history's items with the
item tower, adds positions, runs one self-attention block and reads the newest slot. Both towers end
L2-normalised; training uses in-batch sampled softmax with the logQ correction for popularity (Yi et al., 2019).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.data.schema import ItemCatalog


@dataclass(frozen=True)
class ItemContent:
    title_words: np.ndarray  # int64 [items, words]: hashed word buckets + 1, 0 = padding
    category: np.ndarray  # int64 [items]: category code + 1
    price_band: np.ndarray  # int64 [items]: 1..bands
    buckets: int
    categories: int
    bands: int

    @classmethod
    def from_catalog(cls, catalog: ItemCatalog, buckets: int = 4096, words: int = 8, bands: int = 10) -> ItemContent:
        title_words = np.zeros((len(catalog), words), dtype=np.int64)
        for row, title in enumerate(catalog.titles):
            tokens = re.findall(r"[a-z0-9]+", title.lower())[:words]
            title_words[row, : len(tokens)] = [zlib.crc32(t.encode()) % buckets + 1 for t in tokens]
        names = sorted(set(catalog.categories))
        code = {name: i + 1 for i, name in enumerate(names)}
        log_price = np.log1p(np.maximum(catalog.prices, 0))
        edges = np.quantile(log_price, np.linspace(0, 1, bands + 1)[1:-1]) if len(log_price) else np.zeros(0)
        return cls(
            title_words=title_words,
            category=np.array([code[c] for c in catalog.categories], dtype=np.int64),
            price_band=np.searchsorted(edges, log_price, side="right").astype(np.int64) + 1,
            buckets=buckets,
            categories=len(names),
            bands=bands,
        )


class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention + feed-forward, written out so it exports cleanly to ONNX."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``bias``: additive attention bias broadcastable to [B, heads, L, L] (0 or a large negative)."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ff(self.norm2(x)))


def padding_bias(history: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, 1, L, L] additive bias: padded keys (and, if causal, future keys) get -1e9. The newest slot is always
    attendable so an empty history still gives finite weights."""
    length = history.shape[1]
    padding = history == 0
    padding = torch.cat([padding[:, :-1], torch.zeros_like(padding[:, -1:])], dim=1)
    bias = padding[:, None, None, :].to(torch.float32) * -1e9
    if causal:
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=history.device), diagonal=1)
        bias = bias + future.to(torch.float32)[None, None] * -1e9
    return bias


class ItemTower(nn.Module):
    def __init__(self, content: ItemContent, known: np.ndarray, dim: int, id_dropout: float = 0.1):
        super().__init__()
        items = len(content.category)
        self.num_items, self.dim, self.id_dropout = items, dim, id_dropout
        self.register_buffer("title_words", torch.from_numpy(content.title_words))
        self.register_buffer("category", torch.from_numpy(content.category))
        self.register_buffer("price_band", torch.from_numpy(content.price_band))
        self.register_buffer("known", torch.from_numpy(np.asarray(known, dtype=bool)))
        self.ids = nn.Embedding(items + 1, dim, padding_idx=0)
        self.words = nn.EmbeddingBag(content.buckets + 1, dim, mode="mean", padding_idx=0)
        self.categories = nn.Embedding(content.categories + 1, dim)
        self.bands = nn.Embedding(content.bands + 2, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        for embedding in (self.ids, self.words, self.categories, self.bands):
            nn.init.normal_(embedding.weight, std=0.05)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Unnormalised vectors [..., dim] for catalog rows (any shape)."""
        ids = torch.where(self.known[rows], rows + 1, torch.zeros_like(rows))
        if self.training and self.id_dropout > 0:
            ids = torch.where(torch.rand(ids.shape, device=ids.device) < self.id_dropout, torch.zeros_like(ids), ids)
        words = self.title_words[rows.reshape(-1)]  # [n, W]; padding words are left out of the mean
        word_mean = self.words(words).reshape(*rows.shape, self.dim)
        x = self.ids(ids) + word_mean + self.categories(self.category[rows]) + self.bands(self.price_band[rows])
        return x + self.mlp(x)


class TwoTower(nn.Module):
    def __init__(
        self,
        content: ItemContent,
        known: np.ndarray,
        dim: int = 64,
        history_length: int = 50,
        heads: int = 2,
        dropout: float = 0.1,
        temperature: float = 0.05,
    ):
        super().__init__()
        self.dim, self.history_length, self.temperature = dim, history_length, temperature
        self.item_tower = ItemTower(content, known, dim)
        self.position = nn.Embedding(history_length, dim)
        self.block = _SelfAttention(dim, heads, dropout)
        self.query_norm = nn.LayerNorm(dim)
        self.query_out = nn.Linear(dim, dim)
        nn.init.normal_(self.position.weight, std=0.02)

    @property
    def num_items(self) -> int:
        return self.item_tower.num_items

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.item_tower(rows), dim=-1)

    def token_table(self) -> torch.Tensor:
        """[items + 1, dim] unnormalised item-tower outputs by token (row 0, padding, is zero)."""
        table = self.item_tower(torch.arange(self.num_items, device=self.position.weight.device))
        return torch.cat([torch.zeros_like(table[:1]), table])

    def query(self, history: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """history: [B, L] tokens (row + 1, 0 = padding, left-padded) -> [B, dim] L2-normalised. ``table``
        (from :meth:`token_table`) saves recomputing the item tower for every history slot."""
        table = self.token_table() if table is None else table
        length = history.shape[1]
        positions = torch.arange(length, device=history.device)
        # Histories longer than the position table keep their newest slots' positions.
        positions = (positions + self.history_length - length).clamp(min=0)
        x = table[history] + self.position(positions)[None]
        x = self.block(x, padding_bias(history, causal=False))
        return nn.functional.normalize(self.query_out(self.query_norm(x[:, -1])), dim=-1)

    def forward(self, history_item_ids: torch.Tensor) -> torch.Tensor:
        return self.query(history_item_ids)

    @torch.no_grad()
    def all_item_vectors(self, batch: int = 4096) -> np.ndarray:
        was_training = self.training
        self.eval()
        rows = torch.arange(self.num_items)
        vectors = torch.cat([self.item_vectors(rows[i : i + batch]) for i in range(0, self.num_items, batch)])
        self.train(was_training)
        return vectors.numpy().astype(np.float32)

    def sampled_softmax_loss(self, history: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """In-batch sampled softmax: the other examples' targets are the negatives; ``log_q`` [items] is the log
        probability of an item being a target (how often it appears as one), subtracted from every logit so
        popular items are not over-penalised as negatives. Duplicate targets in the batch are masked."""
        table = self.token_table()
        queries = self.query(history, table)
        items = nn.functional.normalize(table[targets + 1], dim=-1)
        logits = queries @ items.T / self.temperature - log_q[targets][None, :]
        duplicate = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool)
        logits = logits.masked_fill(duplicate, -1e9)
        return nn.functional.cross_entropy(logits, torch.arange(len(targets)))


class QueryTower(nn.Module):
    """The query tower for serving: the item tower's outputs frozen into a table, so a query costs one lookup per
    history slot plus one attention block. Input ``history_item_ids`` [batch, L] (any L), output [batch, dim]."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model
        self.history_length = model.history_length
        with torch.no_grad():
            model.eval()
            self.register_buffer("table", model.token_table().detach().clone())

    def forward(self, history_item_ids: torch.Tensor) -> torch.Tensor:
        return self.model.query(history_item_ids, self.table)
