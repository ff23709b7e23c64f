"""Item facts the re-ranking components need (price, margin, category, brand, ...), from a catalog snapshot.

The snapshot is a JSON object ``{item_id: {"title": ..., "category": ..., "brand": ..., "price": ..., "margin": ...,
"stock": ...}}`` as training exports it (``catalog.json``, :func:`training.export.write_catalog`); a shop's own feed
may add fields such as ``return_cost``, ``new`` (bool) or ``supplier``. Which fields every item has decides which
components a policy may use: a component that needs ``margin`` is refused at start-up when the snapshot has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_NO_RECORD: dict[str, Any] = {}


class CatalogError(ValueError):
    pass


class ItemCatalog:
    def __init__(self, items: dict[str, dict[str, Any]]):
        self.items = items
        fields: set[str] = set()
        for record in items.values():
            fields |= set(record)
        #: Fields every item has (components may rely on these).
        self.features = frozenset(f for f in fields if all(f in r for r in items.values())) if items else frozenset()
        self._flagged: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, path: Path | None) -> ItemCatalog:
        if path is None:
            return cls({})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"cannot read the item catalog {path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise CatalogError(f"{path}: expected a JSON object of item id -> attributes")
        return cls(data)

    def get(self, item_id: str, field: str, default: Any = None) -> Any:
        return self.items.get(item_id, _NO_RECORD).get(field, default)

    def flagged(self, field: str) -> frozenset[str]:
        """The items whose ``field`` is truthy ("new", for instance), worked out once: one set lookup per item
        on the request path instead of two dict lookups."""
        found = self._flagged.get(field)
        if found is None:
            found = self._flagged[field] = frozenset(item for item, record in self.items.items() if record.get(field))
        return found

    def title(self, item_id: str) -> str:
        return str(self.get(item_id, "title", item_id))

    def missing(self, needed: Iterable[str]) -> list[str]:
        return sorted(set(needed) - self.features)
