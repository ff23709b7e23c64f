"""Item facts the re-ranking components need (price, margin, category, brand, ...), from a catalog snapshot.

The snapshot is a JSON object ``{item_id: {"title": ..., "category": ..., "brand": ..., "price": ..., "margin": ...,
"stock": ...}}`` as training exports it (``catalog.json``, :func:`training.export.write_catalog`); a shop's own feed
may add fields such as ``return_cost``, ``new`` (bool) or ``supplier``. Which fields every item has decides which
components a policy may use: a component that needs ``margin`` is refused at start-up when the snapshot has none.

A ``null`` value is an item's unknown value: the field still counts as one every item has, and the components read
it as they read an item the catalog does not hold (no price or margin: 0; unknown stock: kept). The numeric fields
(:data:`NUMERIC_FIELDS`) are read as numbers at load: a number written as text (``"12.99"``, as many feeds write
decimals) is that number, a boolean stock is 1 or 0 (in stock or not), and a value that is no finite number
(``"n/a"``, ``NaN``), which would otherwise fail or skew every request that meets the item, is the item's unknown
value; the load logs how many and which.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_NO_RECORD: dict[str, Any] = {}
#: Fields the components compute with: read as numbers (see the module docstring).
NUMERIC_FIELDS = ("price", "margin", "return_cost", "stock")
#: Values read as unknown named in the load's log, at most.
SHOWN_INVALID = 5


class CatalogError(ValueError):
    pass


class ItemCatalog:
    def __init__(self, items: dict[str, dict[str, Any]]):
        fields: set[str] = set()
        for record in items.values():
            fields |= set(record)
        #: Fields every item has (components may rely on these); an unknown value counts, as the item's own.
        self.features = frozenset(f for f in fields if all(f in r for r in items.values())) if items else frozenset()
        #: How many items have an unknown value (null, or not a finite number where one is needed), by field.
        self.unknown: dict[str, int] = {}
        #: A few of the values read as unknown that were not null, for the load's log.
        self.invalid: list[str] = []
        known = items
        for item, record in items.items():
            if None not in record.values() and all(map(_usable_number, map(record.get, NUMERIC_FIELDS))):
                continue  # the usual record: the whole check adds about 0.7 s to a 1M-item load
            read = {field: _read(field, value) for field, value in record.items()}
            for field, value in read.items():
                if value is None:
                    self.unknown[field] = self.unknown.get(field, 0) + 1
                    if record[field] is not None and len(self.invalid) < SHOWN_INVALID:
                        self.invalid.append(f"item {item!r}: {field} is {record[field]!r}")
            known = dict(items) if known is items else known
            known[item] = {field: value for field, value in read.items() if value is not None}
        self.items = known
        self._flagged: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, path: Path | None) -> ItemCatalog:
        if path is None:
            return cls({})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(
                f"cannot read the item catalog {path}: {exc}; set AISLE_GATEWAY_CATALOG_PATH (--catalog-path) to "
                "the catalog.json `aisle train` exports, or to none to run without a catalog"
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise CatalogError(f"{path}: expected a JSON object of item id -> attributes")
        catalog = cls(data)
        for field, count in sorted(catalog.unknown.items()):
            log.info("catalog %s: %d of %d items have no usable %s: read as unknown", path, count, len(data), field)
        if catalog.invalid:
            log.warning(
                "catalog %s: values that are not finite numbers, read as unknown: %s (%s must be numbers)",
                path,
                "; ".join(catalog.invalid),
                ", ".join(NUMERIC_FIELDS),
            )
        return catalog

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


def _usable_number(value: Any) -> bool:
    """A finite number, or absent (None: the field is not in the record)."""
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value)) or value is None


def _read(field: str, value: Any) -> Any:
    """``value`` as the components read it (a numeric field's as a number); None when it is unknown."""
    if value is None or field not in NUMERIC_FIELDS:
        return value
    if isinstance(value, bool):
        return int(value) if field == "stock" else None  # a stock flag: in stock or not
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        return value
    return value if isinstance(value, float) and math.isfinite(value) else None
