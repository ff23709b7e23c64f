"""Loaders: UCI Online Retail, a generic events file (Parquet/CSV), plain-text sequences, the synthetic shop.

Malformed rows (policy, documented in docs/training.md): by default a loader skips a row it cannot use, counts it
under a reason in the :class:`LoadReport` (with the first three locations, ``file:line``), and goes on; the report
is logged and written into the model metadata. With ``strict=True`` the first such row raises :class:`DataError`
naming the file, the line (CSV and text: the physical line; Parquet: ``row N``, 1-based) and the reason. A file that
cannot be read at all, or lacks a required column, always raises. Events without consent are dropped by policy
(counted as ``no_consent``, never an error), as are those whose consent cell is empty (``unknown_consent``: "not
asked" is not a yes; consent is assumed only when the file has no consent column).
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from services.core.validation import id_problem, region_problem
from training.data.schema import (
    BASKET,
    CATALOG_COLUMNS,
    EVENT_COLUMNS,
    EVENT_KINDS,
    GUEST_PREFIX,
    ITEM,
    KIND_CODES,
    PURCHASE,
    RETURN,
    SEARCH,
    SESSION_PREFIX,
    DataError,
    Dataset,
    ItemCatalog,
    LoadReport,
    build_event_log,
    file_fingerprint,
)

log = logging.getLogger(__name__)

ONLINE_RETAIL_ENV = "AISLE_ONLINE_RETAIL"
#: Assumed margin (fraction of price) wherever the data has none (Online Retail, catalogs without margins).
ASSUMED_MARGIN = 0.35
_PRODUCT_CODE = re.compile(r"^\d{5}[A-Z]{0,2}$")
_FORMATS = ("online-retail", "events", "sequences")


def _table(path: Path, notes: list[str] | None = None) -> pa.Table:
    """Parquet as stored; CSV with every column read as text (each value is then checked row by row). A CSV that
    is not UTF-8 is read as Latin-1 (ISO-8859-1, as the widely circulated Online Retail CSV is), with a note."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        encoding = _csv_encoding(path)
        if encoding != "utf-8" and notes is not None:
            notes.append(f"{path.name} is not UTF-8: read as {encoding} (ISO-8859-1)")
        with path.open(newline="", encoding=_header_encoding(encoding)) as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(encoding=encoding),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=True
            ),
        )
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def _header_encoding(encoding: str) -> str:
    """How to read a CSV's header: a UTF-8 file may start with a byte-order mark (Excel's "CSV UTF-8", R's
    "UTF-8-BOM"), which is not part of the first column's name (pyarrow drops it), quoted or not."""
    return "utf-8-sig" if encoding == "utf-8" else encoding


def _column(table: pa.Table, name: str) -> list:
    """A column's values; timestamps to the second (pyarrow cannot give Python nanoseconds without pandas, and
    event times need no more than seconds)."""
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("s", tz=column.type.tz), safe=False)
    return column.to_pylist()


def _csv_encoding(path: Path) -> str:
    """``utf-8`` when the whole file decodes as UTF-8, else ``latin-1`` (which decodes any bytes)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        try:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


class _Locations:
    """Where a row is, for people: a CSV's physical line (the header is line 1; a record whose quoted values hold
    line breaks spans several lines, and the first is named) or a Parquet row (1-based). A CSV's record lines are
    counted on first use, in one pass over the file: only a file with a row to name pays for it."""

    def __init__(self, path: Path):
        self.path = path
        self._parquet = path.suffix.lower() in (".parquet", ".pq")
        self._starts: list[int] | None = None

    def __call__(self, row: int) -> str:
        if self._parquet:
            return f"{self.path}: row {row + 1}"
        if self._starts is None:
            self._starts = _record_lines(self.path)
        return f"{self.path}:{self._starts[row] if row < len(self._starts) else row + 2}"


def _record_lines(path: Path) -> list[int]:
    """The line each CSV record after the header starts on, blank lines left out as the table reader leaves them;
    as far as Python's reader agrees with the file (a record it cannot read ends the list)."""
    starts: list[int] = []
    try:
        with path.open(newline="", encoding=_header_encoding(_csv_encoding(path))) as handle:
            reader = csv.reader(handle)
            next(reader, None)
            while True:
                start = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    break
                if record:
                    starts.append(start)
    except (OSError, csv.Error):
        pass
    return starts


class _Rows:
    """Applies the malformed-row policy: skip and count, or raise on the first bad row."""

    def __init__(self, path: Path, report: LoadReport, strict: bool):
        self.path, self.report, self.strict = path, report, strict
        self.where = _Locations(path)

    def bad(self, row: int, reason: str, detail: str = "") -> None:
        where = self.where(row)
        if self.strict:
            raise DataError(f"{where}: {reason}" + (f" ({detail})" if detail else ""))
        self.report.skip(reason, where)


# --- Generic events ------------------------------------------------------------------------------------------


#: Epoch numbers at or past these are in finer units than seconds (1e11 s is the year 5138): exports from
#: JavaScript, Segment or Snowplow give milliseconds, some give micro- or nanoseconds.
EPOCH_UNITS = ((1e17, 1e9, "nanoseconds"), (1e14, 1e6, "microseconds"), (1e11, 1e3, "milliseconds"))


def _epoch_seconds(number: float, finer: Counter[str] | None) -> int | None:
    """Seconds since the epoch of an epoch number in seconds or, past :data:`EPOCH_UNITS`' bounds, a finer unit
    (counted in ``finer`` by its name, when given)."""
    if not math.isfinite(number):
        return None
    for above, per_second, unit in EPOCH_UNITS:
        if abs(number) >= above:
            if finer is not None:
                finer[unit] += 1
            return int(number / per_second)
    return int(number)


def _timestamp(value, finer: Counter[str] | None = None) -> int | None:
    """Seconds since the epoch of a datetime, an epoch number (``finer`` counts those read in finer units than
    seconds) or ISO text; None for anything else."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    if isinstance(value, int | float):
        return _epoch_seconds(value, finer)
    text = str(value).strip()
    try:
        return _epoch_seconds(float(text), finer)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def _number(value, kind=float):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    if kind is int and float(value) != number:
        return math.nan
    return number


_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def _flag(value) -> bool | None:
    """True or False as written (a boolean, or the words of ``_TRUE`` and ``_FALSE``); None when unreadable."""
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _regions(value) -> tuple[str, ...] | None:
    """A catalog row's regions: a ``|``-separated string or a list of strings (empty: sold everywhere), each a
    region code (at most 16 letters, digits, '-' and '_'); None if it is anything else (a number, say)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list | tuple) or not all(isinstance(r, str) for r in value):
        return None
    regions = tuple(r.strip() for r in value if r.strip())
    return None if any(region_problem(r) for r in regions) else regions


def load_catalog(path: Path, strict: bool = False, report: LoadReport | None = None) -> ItemCatalog:
    """A catalog file in the documented schema. Missing price: the median; margin: ASSUMED_MARGIN; stock: 1."""
    notes: list[str] = []
    table = _table(path, notes)
    if "item_id" not in table.column_names:
        raise DataError(f"{path}: missing required column 'item_id' (catalog columns: {', '.join(CATALOG_COLUMNS)})")
    report = report or LoadReport(str(path))
    report.notes.extend(notes)
    rows = _Rows(path, report, strict)
    columns = {name: _column(table, name) for name in CATALOG_COLUMNS if name in table.column_names}
    seen: set[str] = set()
    kept: dict[str, list] = {name: [] for name in CATALOG_COLUMNS}
    for i, item in enumerate(columns["item_id"]):
        item = _text(item)
        if not item:
            rows.bad(i, "catalog_missing_item_id")
            continue
        if problem := id_problem(item):  # the servers' rule: refused at export, after the whole fit, otherwise
            rows.bad(i, "catalog_bad_item_id", f"{item!r} {problem}")
            continue
        if item in seen:
            rows.bad(i, "catalog_duplicate_item", item)
            continue
        values = {name: columns[name][i] if name in columns else None for name in CATALOG_COLUMNS}
        price, margin, stock = _number(values["price"]), _number(values["margin"]), _number(values["stock"], int)
        if any(v is not None and not (math.isfinite(v) and v >= 0) for v in (price, margin, stock)):
            rows.bad(i, "catalog_bad_number", item)
            continue
        regions = _regions(values["regions"])
        if regions is None:
            rows.bad(i, "catalog_bad_regions", f"{item}: {values['regions']!r}")
            continue
        seen.add(item)
        kept["item_id"].append(item)
        kept["title"].append(_text(values["title"]) or item)
        kept["category"].append(_text(values["category"]) or "unknown")
        kept["brand"].append(_text(values["brand"]) or "unknown")
        kept["price"].append(math.nan if price is None else price)
        kept["margin"].append(ASSUMED_MARGIN if margin is None else margin)
        kept["stock"].append(1 if stock is None else stock)
        kept["regions"].append(regions)
    if not kept["item_id"]:
        skipped = ", ".join(
            f"{n} {reason}" for reason, n in sorted(report.skipped.items()) if reason.startswith("catalog")
        )
        raise DataError(f"{path}: no usable catalog row ({skipped or 'the file has none'}); see docs/training.md")
    prices = np.asarray(kept["price"], dtype=np.float64)
    known = prices[np.isfinite(prices)]
    prices[~np.isfinite(prices)] = float(np.median(known)) if known.size else 0.0
    return ItemCatalog(
        item_ids=kept["item_id"],
        titles=kept["title"],
        categories=kept["category"],
        brands=kept["brand"],
        prices=prices,
        margins=np.asarray(kept["margin"], dtype=np.float64),
        stock=np.asarray(kept["stock"], dtype=np.int64),
        regions=kept["regions"],
    )


def _derived_catalog(item_ids: list[str], item_prices: dict[str, list[float]], report: LoadReport) -> ItemCatalog:
    items = sorted(set(item_ids))
    medians = [float(np.median(item_prices[i])) if item_prices.get(i) else math.nan for i in items]
    prices = np.asarray(medians, dtype=np.float64)
    known = prices[np.isfinite(prices)]
    prices[~np.isfinite(prices)] = float(np.median(known)) if known.size else 0.0
    report.notes.append(
        "no catalog file: items are the ids in the events, title = id, category and brand 'unknown', "
        f"price = median event price, margin = {ASSUMED_MARGIN} (assumed), stock 1, sold everywhere"
    )
    return ItemCatalog(
        item_ids=items,
        titles=list(items),
        categories=["unknown"] * len(items),
        brands=["unknown"] * len(items),
        prices=prices,
        margins=np.full(len(items), ASSUMED_MARGIN),
        stock=np.ones(len(items), dtype=np.int64),
        regions=[()] * len(items),
    )


def load_events(path: Path, catalog_path: Path | None = None, strict: bool = False) -> Dataset:
    """A shop's events export (Parquet or CSV) in the documented schema, with an optional catalog file."""
    notes: list[str] = []
    table = _table(path, notes)
    missing = [c for c in ("event_type", "timestamp", "item_id") if c not in table.column_names]
    if missing or not ({"user_id", "session_id"} & set(table.column_names)):
        need = missing + ([] if {"user_id", "session_id"} & set(table.column_names) else ["user_id or session_id"])
        raise DataError(f"{path}: missing required column(s) {', '.join(need)} (see docs/training.md)")
    report = LoadReport(str(path), rows_read=table.num_rows, notes=notes)
    rows = _Rows(path, report, strict)
    catalog = load_catalog(catalog_path, strict, report) if catalog_path else None
    known = catalog.rows() if catalog is not None else None
    column = {name: _column(table, name) if name in table.column_names else None for name in _EVENT_NAMES}
    out: dict[str, list] = {
        name: [] for name in ("user", "item", "kind", "time", "qty", "price", "region", "dev", "bk")
    }
    item_prices: dict[str, list[float]] = {}
    finer: Counter[str] = Counter()  # timestamps read as milli-, micro- or nanoseconds since the epoch

    def value(name, i):
        values = column[name]
        return None if values is None else values[i]

    for i in range(table.num_rows):
        kind = _text(value("event_type", i)).lower()
        if kind not in KIND_CODES:
            rows.bad(i, "unknown_event_type", repr(value("event_type", i)))
            continue
        when = _timestamp(value("timestamp", i), finer)
        if when is None:
            rows.bad(i, "bad_timestamp", repr(value("timestamp", i)))
            continue
        user, session = _text(value("user_id", i)), _text(value("session_id", i))
        if not user and not session:
            rows.bad(i, "no_user_or_session")
            continue
        item = _text(value("item_id", i))
        if not item and kind != SEARCH:
            rows.bad(i, "missing_item_id")
            continue
        if item and (problem := id_problem(item)):
            rows.bad(i, "bad_item_id", f"{item!r} {problem}")
            continue
        if known is not None and item and item not in known:
            rows.bad(i, "unknown_item", item)
            continue
        quantity = _number(value("quantity", i), int)
        if quantity is not None and (math.isnan(quantity) or quantity <= 0):
            rows.bad(i, "bad_quantity", repr(value("quantity", i)))
            continue
        price = _number(value("price", i))
        if price is not None and (math.isnan(price) or price < 0):
            rows.bad(i, "bad_price", repr(value("price", i)))
            continue
        region = _text(value("region", i))
        if region_problem(region):  # the index lists it, and requests name it: a code they can send
            rows.bad(i, "bad_region", f"{region[:40]!r}: at most 16 letters, digits, '-' and '_' (GB, US-CA)")
            continue
        # No consent column: consent is assumed (the documented default). In a consent column an empty cell is
        # "not asked", not a yes: personal data is trained on only with a recorded one.
        if column["consent"] is None:
            consent = True
        elif not _text(value("consent", i)):
            report.skip("unknown_consent", rows.where(i))
            continue
        else:
            consent = _flag(value("consent", i))
        if consent is None:
            rows.bad(i, "bad_consent", repr(value("consent", i)))
            continue
        if not consent:
            report.skip("no_consent", rows.where(i))
            continue
        out["user"].append(user or f"{SESSION_PREFIX}{session}")
        out["item"].append(item)
        out["kind"].append(KIND_CODES[kind])
        out["time"].append(when)
        out["qty"].append(1 if quantity is None else quantity)
        out["price"].append(math.nan if price is None else price)
        out["region"].append(region or None)
        out["dev"].append(_text(value("device", i)).lower() or None)
        out["bk"].append(_text(value("basket_id", i)) or None)
        if item and price is not None and kind == PURCHASE:
            item_prices.setdefault(item, []).append(price)
    for unit, count in sorted(finer.items()):
        report.notes.append(
            f"{count} timestamps read as {unit} since the epoch (numbers that large as seconds are past the year 5000)"
        )
    if catalog is None:
        catalog = _derived_catalog([i for i in out["item"] if i], item_prices, report)
        known = catalog.rows()
    report.rows_kept = len(out["user"])
    events = build_event_log(
        out["user"],
        np.array([known[i] if i else -1 for i in out["item"]], dtype=np.int32),
        np.asarray(out["kind"], dtype=np.int8),
        np.asarray(out["time"], dtype=np.int64),
        np.asarray(out["qty"], dtype=np.int32),
        np.asarray(out["price"], dtype=np.float64),
        out["region"],
        out["dev"],
        out["bk"],
    )
    spec = {"format": "events", "path": str(path), "catalog": str(catalog_path) if catalog_path else None}
    return Dataset(path.stem, catalog, events, report, BASKET, file_fingerprint(path), spec)


#: The schema's event columns this loader reads (search queries are not used for training).
_EVENT_NAMES = tuple(name for name in EVENT_COLUMNS if name != "query")


# --- Plain-text sequences ------------------------------------------------------------------------------------


def load_sequences(path: Path, strict: bool = False) -> Dataset:
    """One line per user, ``user_id item_id item_id ...`` in time order (whitespace-separated).

    Blank lines and lines starting with ``#`` are ignored. A line with a user and no items, or a user seen on an
    earlier line, is malformed. Each item is its own purchase event at time = its position in the line, so the
    split holds out the last item (not a basket).
    """
    report = LoadReport(str(path))
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    seen: set[str] = set()
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    with handle:
        try:
            lines = handle.read().split("\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: cannot read: {exc} (save it as UTF-8)") from None
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            report.rows_read += 1
            where = f"{path}:{number}"
            reason = "no_items" if len(tokens) < 2 else "duplicate_user" if tokens[0] in seen else ""
            bad_item = next((token for token in tokens[1:] if id_problem(token)), None)
            reason = reason or ("bad_item_id" if bad_item is not None else "")
            if reason:
                if strict:
                    detail = (
                        f"{bad_item!r} {id_problem(bad_item)}"
                        if reason == "bad_item_id"
                        else ("a line is 'user_id item_id item_id ...', one per user")
                    )
                    raise DataError(f"{where}: {reason} ({detail})")
                report.skip(reason, where)
                continue
            seen.add(tokens[0])
            report.rows_kept += 1
            users.extend([tokens[0]] * (len(tokens) - 1))
            items.extend(tokens[1:])
            times.extend(range(len(tokens) - 1))
    catalog = _derived_catalog(items, {}, report)
    rows = catalog.rows()
    events = build_event_log(
        users,
        np.array([rows[i] for i in items], dtype=np.int32),
        np.full(len(items), KIND_CODES[PURCHASE], dtype=np.int8),
        np.asarray(times, dtype=np.int64),
    )
    spec = {"format": "sequences", "path": str(path)}
    return Dataset(path.stem, catalog, events, report, ITEM, file_fingerprint(path), spec)


# --- UCI Online Retail ---------------------------------------------------------------------------------------

_STOP_WORDS = set(
    """A AN AND OF THE WITH IN ON FOR TO SET SETS PACK SMALL LARGE MEDIUM MINI JUMBO BIG GIANT TINY
    RED PINK BLUE WHITE GREEN BLACK IVORY CREAM GOLD SILVER PURPLE YELLOW ORANGE BROWN GREY GRAY CLEAR
    TURQUOISE LILAC NATURAL ASSORTED COLOUR COLOURS COLOURED RETROSPOT SPOTTY SPOT SPOTS POLKADOT DOTS STRIPE
    STRIPES DESIGN DESIGNS VINTAGE RETRO DOILY PAISLEY SKULL SKULLS FLORAL FLOWER ROSE ROSES HEART HEARTS
    STAR STARS BIRD BIRDS LOVE WOODLAND PANTRY REGENCY ENGLISH FRENCH SCANDINAVIAN CM MM""".split()
)


def title_category(title: str) -> str:
    """A crude category from a product name: its last word that is not a colour, size, pattern or filler word
    (``JUMBO BAG RED RETROSPOT`` -> ``BAG``, ``WHITE HANGING HEART T-LIGHT HOLDER`` -> ``HOLDER``), plural 's'
    removed. Online Retail has no categories; this is an assumption, documented in docs/training.md."""
    words = [w for w in re.findall(r"[A-Z]+", title.upper()) if len(w) > 1 and w not in _STOP_WORDS]
    if not words:
        return "OTHER"
    word = words[-1]
    plural = len(word) > 3 and word.endswith("S") and not word.endswith(("SS", "AS", "US", "IS"))
    return word[:-1] if plural else word


def _numbers(path: Path, table: pa.Table, name: str, kind=float) -> np.ndarray:
    """A numeric column value by value (Parquet numbers or CSV text): NaN where a value is missing or not a
    (whole, for ``int``) number. A column without a single number cannot be the data: DataError."""
    values = table.column(name).to_pylist()
    numbers = np.array([_number(v, kind) for v in values], dtype=np.float64)  # None -> NaN
    if len(numbers) and not np.isfinite(numbers).any():
        raise DataError(
            f"{path}: no {name} value is a number (the first is {values[0]!r}): Online Retail's {name} holds "
            "plain numbers (e.g. 6, 2.55); check the column or the file's delimiter"
        )
    return numbers


def _customer_ids(values: list) -> tuple[np.ndarray, np.ndarray]:
    """CustomerID as numbers (NaN for guests: missing, blank or 'nan') and where a value is not a whole number."""
    ids = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        number = _number(value)
        if number is None or (math.isnan(number) and str(value).strip().lower() == "nan"):
            continue  # a guest
        if math.isfinite(number) and number == int(number):
            ids[i] = number
        else:
            bad[i] = True
    return ids, bad


#: ``12/1/2010 8:26`` (as the common CSV export of the Online Retail sheet writes InvoiceDate), seconds optional.
_SLASHED_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def _invoice_times(path: Path, values: list) -> np.ndarray:
    """InvoiceDate as unix seconds read as UTC, -1 where a value is no date. Timestamps, ISO 8601 text
    (``2010-12-01 08:26:00``) or slashed dates (``12/1/2010 8:26``): month first unless some date's first part is
    over 12 (then day first); a file whose slashed dates read either way is refused as ambiguous."""
    slashed = [_SLASHED_DATE.match(v.strip()) if isinstance(v, str) else None for v in values]
    matches = [m for m in slashed if m]
    day_first = False
    if matches:
        first, second = (max(int(m.group(part)) for m in matches) for part in (1, 2))
        if first > 12 and second > 12:
            raise DataError(
                f"{path}: InvoiceDate mixes month/day/year and day/month/year dates: save the dates as ISO 8601 "
                "(2010-12-01 08:26)"
            )
        if first <= 12 and second <= 12 and any(m.group(1) != m.group(2) for m in matches):
            raise DataError(
                f"{path}: InvoiceDate dates like {matches[0].group(0)!r} read as month/day or as day/month alike "
                "(no part is over 12): save the dates as ISO 8601 (2010-12-01 08:26)"
            )
        day_first = first > 12
    times = np.full(len(values), -1, dtype=np.int64)
    for i, (value, match) in enumerate(zip(values, slashed, strict=True)):
        when = _slashed_time(match, day_first) if match else _timestamp(value)
        if when is not None:
            times[i] = when
    if len(times) and (times <= 0).all():
        raise DataError(
            f"{path}: no InvoiceDate value is a date (the first is {values[0]!r}): expected timestamps, ISO 8601 "
            "(2010-12-01 08:26:00) or month/day/year (12/1/2010 8:26)"
        )
    return times


def _slashed_time(match: re.Match, day_first: bool) -> int | None:
    first, second, year = int(match.group(1)), int(match.group(2)), int(match.group(3))
    day, month = (first, second) if day_first else (second, first)
    hour, minute, second_ = (int(match.group(part) or 0) for part in (4, 5, 6))
    try:
        return int(datetime(year, month, day, hour, minute, second_, tzinfo=UTC).timestamp())
    except ValueError:  # 2/30/2011, 25:00
        return None


#: Online Retail's Country values as region codes (ISO 3166-1 alpha-2, as a shop's requests name regions; "EU" is
#: ISO's reserved code for the European Union). A name not listed becomes :func:`region_code` of itself.
ONLINE_RETAIL_REGIONS = {
    "Australia": "AU",
    "Austria": "AT",
    "Bahrain": "BH",
    "Belgium": "BE",
    "Brazil": "BR",
    "Canada": "CA",
    "Cyprus": "CY",
    "Czech Republic": "CZ",
    "Denmark": "DK",
    "EIRE": "IE",
    "European Community": "EU",
    "Finland": "FI",
    "France": "FR",
    "Germany": "DE",
    "Greece": "GR",
    "Hong Kong": "HK",
    "Iceland": "IS",
    "Israel": "IL",
    "Italy": "IT",
    "Japan": "JP",
    "Lebanon": "LB",
    "Lithuania": "LT",
    "Malta": "MT",
    "Netherlands": "NL",
    "Norway": "NO",
    "Poland": "PL",
    "Portugal": "PT",
    "RSA": "ZA",
    "Saudi Arabia": "SA",
    "Singapore": "SG",
    "Spain": "ES",
    "Sweden": "SE",
    "Switzerland": "CH",
    "USA": "US",
    "United Arab Emirates": "AE",
    "United Kingdom": "GB",
}


def region_code(name: str) -> str:
    """A region name as a code requests can send (``services.core.validation.region_problem``): upper case,
    anything but letters and digits as ``_``, at most 16 characters ("Channel Islands" -> ``CHANNEL_ISLANDS``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name.strip()).strip("_").upper()[:16]


def load_online_retail(path: Path, include_guests: bool = True, strict: bool = False) -> Dataset:
    """UCI Online Retail (see its README): invoices -> purchases, ``C`` invoices -> returns.

    Derived (docs/training.md): title = the code's most common Description; category = :func:`title_category`;
    brand = ``family-<first 3 digits of the stock code>``; price = median unit price of its purchases; margin =
    ASSUMED_MARGIN; stock 1 (in stock); sold everywhere; region = Country as a code (:data:`ONLINE_RETAIL_REGIONS`,
    ``Unspecified`` = unknown); consent
    assumed; timestamps = InvoiceDate read as UTC. Guest rows (no CustomerID) become one anonymous session per
    invoice (training only: a single basket is never held out) unless ``include_guests`` is false.
    Skipped and counted: non-product stock codes (postage, fees, manual adjustments, gift vouchers), values that
    are missing or unreadable (Quantity not a whole number, UnitPrice not a finite number, CustomerID not a number,
    InvoiceDate not a date; see :func:`_invoice_times` for the formats), purchases with quantity <= 0 or unit price
    <= 0, cancellations with quantity >= 0, returns of items never purchased.
    """
    notes: list[str] = []
    table = _table(path, notes)
    needed = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: not an Online Retail file, missing column(s) {', '.join(missing)}")
    report = LoadReport(str(path), rows_read=table.num_rows, notes=notes)
    invoice = np.asarray(table.column("InvoiceNo").to_pylist(), dtype=object)
    code = np.asarray([str(c).strip().upper() for c in table.column("StockCode").to_pylist()], dtype=object)
    description = table.column("Description").to_pylist()
    # Value by value: NaN (or -1 for times) where a value is missing or unreadable, counted below as a bad row.
    quantity = _numbers(path, table, "Quantity", int)
    when = _invoice_times(path, _column(table, "InvoiceDate"))
    price = _numbers(path, table, "UnitPrice")
    customer, bad_customer = _customer_ids(table.column("CustomerID").to_pylist())
    country = table.column("Country").to_pylist()

    cancelled = np.array([str(i).startswith("C") for i in invoice])
    product = np.array([bool(_PRODUCT_CODE.match(c)) for c in code])
    guest = ~np.isfinite(customer) & ~bad_customer
    reasons = [
        ("non_product_code", ~product),
        ("guest_row", guest if not include_guests else np.zeros_like(guest)),
        ("bad_quantity", ~np.isfinite(quantity)),
        ("bad_price", ~np.isfinite(price)),
        ("bad_customer_id", bad_customer),
        ("bad_timestamp", when <= 0),
        ("non_positive_quantity", ~cancelled & (quantity <= 0)),
        ("non_positive_price", ~cancelled & (price <= 0)),
        ("cancellation_with_positive_quantity", cancelled & (quantity >= 0)),
    ]
    keep = np.ones(len(invoice), dtype=bool)
    where = _Locations(path)
    for reason, bad in reasons:
        bad = bad & keep
        if bad.any():
            first = int(np.argmax(bad))
            if strict:
                raise DataError(f"{where(first)}: {reason} (invoice {invoice[first]}, code {code[first]})")
            for row in np.flatnonzero(bad)[:3]:
                report.examples.setdefault(reason, []).append(where(int(row)))
            report.skipped[reason] += int(bad.sum())
        keep &= ~bad
    purchase = keep & ~cancelled
    items = sorted(set(code[purchase]))
    rows = {item: row for row, item in enumerate(items)}
    item_set = set(items)
    returned_unknown = keep & cancelled & np.array([c not in item_set for c in code])
    if returned_unknown.any():
        report.skipped["return_of_unknown_item"] += int(returned_unknown.sum())
        report.examples["return_of_unknown_item"] = [where(int(r)) for r in np.flatnonzero(returned_unknown)[:3]]
        keep &= ~returned_unknown

    names: dict[str, Counter] = {}
    for c, d in zip(code, description, strict=True):
        if d is not None and d != "nan" and str(d).strip():
            names.setdefault(c, Counter())[str(d).strip()] += 1
    titles = [names[i].most_common(1)[0][0] if i in names else i for i in items]
    purchase_rows = np.flatnonzero(purchase)
    order = np.argsort(code[purchase_rows], kind="stable")
    sorted_codes = code[purchase_rows][order]
    bounds = np.searchsorted(sorted_codes, items + [chr(0x10FFFF)])
    sorted_prices = price[purchase_rows][order]
    prices = np.array([np.median(sorted_prices[bounds[r] : bounds[r + 1]]) for r in range(len(items))])
    catalog = ItemCatalog(
        item_ids=items,
        titles=titles,
        categories=[title_category(t) for t in titles],
        brands=[f"family-{i[:3]}" for i in items],
        prices=prices,
        margins=np.full(len(items), ASSUMED_MARGIN),
        stock=np.ones(len(items), dtype=np.int64),
        regions=[()] * len(items),
    )
    kept = np.flatnonzero(keep)
    report.rows_kept = len(kept)
    report.notes.extend(
        [
            "purchases: non-cancelled invoice lines; returns: cancellation ('C') lines with |Quantity| units",
            "basket = invoice; guests (no CustomerID) = one anonymous session per invoice"
            if include_guests
            else "basket = invoice; guest rows dropped",
            "title = most common Description of the stock code (Description 'nan' = missing)",
            "category = last non-filler word of the title (heuristic); brand = family-<first 3 digits of code>",
            f"price = median unit price of the item's purchases; margin = {ASSUMED_MARGIN} (assumed); stock = 1",
            "region = Country as an ISO 3166-1 code (United Kingdom = GB, EIRE = IE, RSA = ZA, European Community = "
            "EU; Channel Islands = CHANNEL_ISLANDS; 'Unspecified' = unknown); consent assumed; InvoiceDate read as UTC",
        ]
    )
    user_keys = [f"{GUEST_PREFIX}{invoice[r]}" if guest[r] else str(int(customer[r])) for r in kept]
    events = build_event_log(
        user_keys,
        np.array([rows[c] for c in code[kept]], dtype=np.int32),
        np.where(cancelled[kept], KIND_CODES[RETURN], KIND_CODES[PURCHASE]).astype(np.int8),
        when[kept],
        np.abs(quantity[kept]).astype(np.int32),
        price[kept],
        [_country_region(country[r]) for r in kept],
        None,
        [str(invoice[r]) for r in kept],
    )
    spec = {"format": "online-retail", "path": str(path), "include_guests": include_guests}
    return Dataset("online_retail", catalog, events, report, BASKET, file_fingerprint(path), spec)


def _country_region(name: str | None) -> str | None:
    if name is None or not str(name).strip() or name == "Unspecified":
        return None
    return ONLINE_RETAIL_REGIONS.get(name) or region_code(str(name)) or None


# --- Synthetic shop ------------------------------------------------------------------------------------------


def synthetic_dataset(users: int = 2000, items: int = 1000, seed: int = 0) -> Dataset:
    """The seeded synthetic shop (training.synthetic) as events: a session's purchases form one basket."""
    from training.synthetic import generate_shop

    shop = generate_shop(n_users=users, n_items=items, seed=seed)
    events, cat = shop.events, shop.catalog
    kinds = np.array([KIND_CODES[k] for k in events.kind], dtype=np.int8)
    session = events.session if events.session is not None else np.zeros(len(events.user), dtype=np.int32)
    catalog = ItemCatalog(
        item_ids=list(cat.item_ids),
        titles=list(cat.titles),
        categories=list(cat.categories),
        brands=list(cat.brands),
        prices=np.asarray(cat.prices, dtype=np.float64),
        margins=np.asarray(cat.margins, dtype=np.float64),
        stock=np.asarray(cat.stock, dtype=np.int64),
        regions=list(cat.regions),
    )
    report = LoadReport("synthetic", rows_read=len(kinds), rows_kept=len(kinds))
    report.notes.append(f"synthetic shop: {users} users, {items} items, seed {seed}; basket = a session's purchases")
    log_ = build_event_log(
        [shop.user_ids[u] for u in events.user],
        events.item,
        kinds,
        events.timestamp,
        events.quantity,
        np.asarray(cat.prices)[events.item],
        [shop.user_regions[u] for u in events.user],
        None,
        [f"{u}/{s}" for u, s in zip(events.user, session, strict=True)],
    )
    spec = {"format": "synthetic", "users": users, "items": items, "seed": seed}
    return Dataset("synthetic", catalog, log_, report, BASKET, f"synthetic:{users}:{items}:{seed}", spec)


# --- Choosing a loader ---------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".seq"):
        return "sequences"
    if suffix not in (".parquet", ".pq", ".csv"):
        raise DataError(f"{path}: unknown file type {suffix!r}; use .parquet, .csv or .txt, or pass --format")
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding=_header_encoding(_csv_encoding(path))) as handle:
                names = next(csv.reader(handle), [])
        else:
            names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc} (is it the {suffix} file its name says?)") from None
    return "online-retail" if "InvoiceNo" in names and "StockCode" in names else "events"


def load_dataset(spec: dict) -> Dataset:
    """Loads what ``spec`` names: ``{"format": "synthetic", ...}`` or ``{"format": ..., "path": ...}``."""
    fmt = spec.get("format", "auto")
    if fmt == "synthetic":
        return synthetic_dataset(spec.get("users", 2000), spec.get("items", 1000), spec.get("seed", 0))
    path = Path(spec["path"])
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if fmt == "auto":
        fmt = detect_format(path)
    strict = bool(spec.get("strict", False))
    if fmt == "online-retail":
        dataset = load_online_retail(path, include_guests=spec.get("include_guests", True), strict=strict)
    elif fmt == "events":
        catalog = spec.get("catalog")
        dataset = load_events(path, Path(catalog) if catalog else None, strict=strict)
    elif fmt == "sequences":
        dataset = load_sequences(path, strict=strict)
    else:
        raise DataError(f"unknown data format {fmt!r}; one of {', '.join(_FORMATS)} or auto")
    skipped = sum(dataset.report.skipped.values())
    log.info(
        "%s: %d rows read, %d kept, %d skipped %s",
        path,
        dataset.report.rows_read,
        dataset.report.rows_kept,
        skipped,
        dict(dataset.report.skipped) if skipped else "",
    )
    return dataset


__all__ = [
    "EVENT_KINDS",
    "ONLINE_RETAIL_ENV",
    "detect_format",
    "load_catalog",
    "load_dataset",
    "load_events",
    "load_online_retail",
    "load_sequences",
    "synthetic_dataset",
    "title_category",
]
