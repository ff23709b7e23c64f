"""The event and item catalog schema every loader produces (documented in docs/training.md).

A shop exports two tables. Events, one row per interaction:

| column       | type                 | required | meaning                                                          |
|--------------|----------------------|----------|------------------------------------------------------------------|
| event_type   | string               | yes      | ``view``, ``add_to_cart``, ``purchase``, ``return`` or ``search`` |
| timestamp    | timestamp or seconds | yes      | when it happened (UTC); ISO-8601 text or Unix seconds in CSV     |
| user_id      | string               | one of   | signed-in customer                                               |
| session_id   | string               | the two  | anonymous session (used when user_id is empty)                   |
| item_id      | string               | yes*     | the product (*empty only for ``search``)                         |
| quantity     | int                  | no (1)   | units; > 0                                                       |
| price        | float                | no       | unit price at the time of the event; >= 0                        |
| region       | string               | no       | country or region code                                           |
| device       | string               | no       | ``desktop``, ``mobile``, ``tablet``, ...                         |
| consent      | bool                 | no (yes) | the customer allowed personalisation; events without are dropped |
|              |                      |          | (an empty cell in the column: not asked, dropped too)            |
| basket_id    | string               | no       | order / invoice id grouping one purchase                         |
| query        | string               | no       | search text (``search`` events)                                  |

The item catalog, one row per item: item_id, title, category, brand, price, margin (fraction of price), stock
(units), regions (where sold: a list, or ``|``-separated text in CSV).

In memory, :class:`EventLog` keeps the columns as numpy arrays sorted by time, with users, items, regions and
devices as integer codes; the item code is the catalog row, which is the vocabulary row (token = row + 1).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIEW, ADD_TO_CART, PURCHASE, RETURN, SEARCH = "view", "add_to_cart", "purchase", "return", "search"
EVENT_KINDS = (VIEW, ADD_TO_CART, PURCHASE, RETURN, SEARCH)
KIND_CODES = {kind: code for code, kind in enumerate(EVENT_KINDS)}

EVENT_COLUMNS = (
    "event_type",
    "timestamp",
    "user_id",
    "session_id",
    "item_id",
    "quantity",
    "price",
    "region",
    "device",
    "consent",
    "basket_id",
    "query",
)
CATALOG_COLUMNS = ("item_id", "title", "category", "brand", "price", "margin", "stock", "regions")

#: How sequences of one user are held out: by basket (orders) or by single item (plain-text sequences).
BASKET, ITEM = "basket", "item"


class DataError(ValueError):
    """A row or file that cannot be used. The message names the file and the line (or row)."""


@dataclass(frozen=True)
class ItemCatalog:
    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    brands: list[str]
    prices: np.ndarray  # float64
    margins: np.ndarray  # float64, fraction of price
    stock: np.ndarray  # int64 units
    regions: list[tuple[str, ...]]  # where sold; empty tuple = everywhere

    def __post_init__(self) -> None:
        count = len(self.item_ids)
        columns = (self.titles, self.categories, self.brands, self.prices, self.margins, self.stock, self.regions)
        if any(len(column) != count for column in columns):
            raise ValueError("every catalog column needs one entry per item")
        if len(set(self.item_ids)) != count:
            raise ValueError("catalog item ids must be unique")

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.item_ids)}


@dataclass
class LoadReport:
    """What a loader read, kept and skipped (by reason, with the first few locations), and what it derived."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.skipped[reason] += count
        if len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(where)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": self.examples,
            "notes": self.notes,
        }


#: How user keys name shoppers without an account: a generic file's session (``session:<session_id>``) and an Online
#: Retail guest's invoice (``guest:<InvoiceNo>``). Their baskets are training data only (never held out).
SESSION_PREFIX, GUEST_PREFIX = "session:", "guest:"


def is_anonymous(user_key: str) -> bool:
    return user_key.startswith((SESSION_PREFIX, GUEST_PREFIX))


@dataclass(frozen=True)
class EventLog:
    """Events sorted by time (ties keep file order). Lookup lists decode the integer columns."""

    users: list[str]  # user key per code: the user id, or "session:<id>" for anonymous sessions
    regions: list[str]
    devices: list[str]
    user: np.ndarray  # int32
    item: np.ndarray  # int32 catalog row, -1 for search events
    kind: np.ndarray  # int8, index into EVENT_KINDS
    timestamp: np.ndarray  # int64 Unix seconds
    quantity: np.ndarray  # int32
    price: np.ndarray  # float64, NaN when unknown
    region: np.ndarray  # int32, -1 when unknown
    device: np.ndarray  # int32, -1 when unknown
    basket: np.ndarray  # int64 basket code, -1 when the row has none

    def __len__(self) -> int:
        return len(self.user)

    def of_kind(self, kind: str) -> np.ndarray:
        return self.kind == KIND_CODES[kind]


@dataclass(frozen=True)
class Dataset:
    name: str
    catalog: ItemCatalog
    events: EventLog
    report: LoadReport
    granularity: str = BASKET
    fingerprint: str = ""
    #: The loader and its arguments, so evaluation can load the same data again.
    spec: dict = field(default_factory=dict)

    def summary(self) -> dict:
        purchases = self.events.of_kind(PURCHASE)
        return {
            "name": self.name,
            "granularity": self.granularity,
            "fingerprint": self.fingerprint,
            "items": len(self.catalog),
            "users": len(self.events.users),
            "events": len(self.events),
            "purchases": int(purchases.sum()),
            "returns": int(self.events.of_kind(RETURN).sum()),
            "load": self.report.as_dict(),
        }


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def codes(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes (first-seen order) for non-empty values, -1 for empty or missing ones."""
    lookup: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int32)
    for i, value in enumerate(values):
        out[i] = lookup.setdefault(value, len(lookup)) if value else -1
    return out, list(lookup)


def build_event_log(
    user_keys: list[str],
    item_rows: np.ndarray,
    kinds: np.ndarray,
    timestamps: np.ndarray,
    quantities: np.ndarray | None = None,
    prices: np.ndarray | None = None,
    regions: list[str | None] | None = None,
    devices: list[str | None] | None = None,
    baskets: list[str | None] | None = None,
) -> EventLog:
    """Sorts by time (stable) and codes the categorical columns."""
    count = len(user_keys)
    order = np.argsort(np.asarray(timestamps, dtype=np.int64), kind="stable")

    def take(values, default, dtype):
        if values is None:
            return np.full(count, default, dtype=dtype)[order]
        return np.asarray(values, dtype=dtype)[order]

    def take_codes(values):
        if values is None:
            return np.full(count, -1, dtype=np.int32), []
        return codes([values[i] for i in order])

    user, users = codes([user_keys[i] for i in order])
    region, region_names = take_codes(regions)
    device, device_names = take_codes(devices)
    basket, _ = take_codes(baskets)
    return EventLog(
        users=users,
        regions=region_names,
        devices=device_names,
        user=user,
        item=take(item_rows, -1, np.int32),
        kind=take(kinds, 0, np.int8),
        timestamp=take(timestamps, 0, np.int64),
        quantity=take(quantities, 1, np.int32),
        price=take(prices, np.nan, np.float64),
        region=region,
        device=device,
        basket=basket.astype(np.int64),
    )
