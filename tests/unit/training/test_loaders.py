"""Loaders: the documented schema, derivations, and the malformed-row policy (skip and count, or strict)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.loaders import (
    ONLINE_RETAIL_ENV,
    detect_format,
    load_dataset,
    load_events,
    load_online_retail,
    load_sequences,
    synthetic_dataset,
    title_category,
)
from training.data.schema import EVENT_KINDS, KIND_CODES, PURCHASE, RETURN, DataError

EVENTS_CSV = """event_type,timestamp,user_id,session_id,item_id,quantity,price,region,device,consent,basket_id
view,2024-01-01T10:00:00Z,u1,,A,,,GB,mobile,true,
purchase,2024-01-01T10:05:00Z,u1,,A,2,3.5,GB,mobile,true,o1
purchase,1704103500,u1,,B,1,10,GB,mobile,t,o1
purchase,not-a-time,u1,,B,1,10,GB,mobile,true,o1
teleport,2024-01-01T10:05:00Z,u1,,B,1,10,GB,mobile,true,o1
purchase,2024-01-01T10:05:00Z,,,B,1,10,GB,mobile,true,o1
purchase,2024-01-01T10:05:00Z,u2,,,1,10,GB,mobile,true,o2
purchase,2024-01-01T10:05:00Z,u2,,B,-1,10,GB,mobile,true,o2
purchase,2024-01-01T10:05:00Z,u2,,B,1,abc,GB,mobile,true,o2
purchase,2024-01-01T10:05:00Z,u2,,B,1,10,GB,mobile,maybe,o2
purchase,2024-01-01T10:05:00Z,u2,,B,1,10,GB,mobile,false,o2
return,2024-01-03T09:00:00,,s9,A,1,3.5,,desktop,yes,
search,2024-01-03T09:00:00,,s9,,,,,,1,
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_csv_keeps_good_rows_and_counts_bad_ones_with_their_lines(tmp_path):
    path = write(tmp_path, "events.csv", EVENTS_CSV)
    dataset = load_events(path)
    report = dataset.report
    assert report.rows_read == 13 and report.rows_kept == 5
    assert dict(report.skipped) == {
        "bad_timestamp": 1,
        "unknown_event_type": 1,
        "no_user_or_session": 1,
        "missing_item_id": 1,
        "bad_quantity": 1,
        "bad_price": 1,
        "bad_consent": 1,
        "no_consent": 1,
    }
    # Lines are physical file lines: the header is line 1.
    assert report.examples["bad_timestamp"] == [f"{path}:5"]
    assert report.examples["no_consent"] == [f"{path}:12"]
    events = dataset.events
    assert [EVENT_KINDS[k] for k in events.kind] == ["view", "purchase", "purchase", "return", "search"]
    assert dataset.catalog.item_ids == ["A", "B"]  # derived from the events, sorted
    assert dataset.catalog.prices.tolist() == [3.5, 10.0]  # median purchase price
    assert events.users == ["u1", "session:s9"]
    assert events.quantity.tolist() == [1, 2, 1, 1, 1]
    assert events.item.tolist() == [0, 0, 1, 0, -1]
    assert events.timestamp[1] == int(datetime.fromisoformat("2024-01-01T10:05:00+00:00").timestamp())
    assert [events.devices[d] if d >= 0 else None for d in events.device] == ["mobile"] * 3 + ["desktop", None]


def test_a_consent_column_with_a_blank_cell_is_no_consent_not_a_yes(tmp_path):
    """A shop that exports consent leaves a cell blank for "not asked": those events were trained on as consented.
    Without the column at all, consent is assumed (the documented default)."""
    path = write(
        tmp_path,
        "events.csv",
        "event_type,timestamp,user_id,item_id,consent\n"
        "purchase,2024-01-01T10:00:00Z,u1,A,yes\n"
        "purchase,2024-01-01T10:00:00Z,u2,A,\n"
        "purchase,2024-01-01T10:00:00Z,u3,A,  \n",
    )
    report = load_events(path).report
    assert report.rows_kept == 1 and dict(report.skipped) == {"unknown_consent": 2}
    table = pa.table(
        {
            "event_type": ["purchase"] * 2,
            "timestamp": ["2024-01-01T10:00:00Z"] * 2,
            "user_id": ["u1", "u2"],
            "item_id": ["A", "A"],
            "consent": [True, None],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    dataset = load_events(tmp_path / "events.parquet")
    assert dataset.events.users == ["u1"] and dict(dataset.report.skipped) == {"unknown_consent": 1}
    without = write(tmp_path, "plain.csv", "event_type,timestamp,user_id,item_id\npurchase,2024-01-01T10:00:00Z,u1,A\n")
    assert load_events(without).report.rows_kept == 1


def test_strict_mode_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "events.csv", EVENTS_CSV)
    with pytest.raises(DataError, match=rf"{path.name}:5: bad_timestamp"):
        load_events(path, strict=True)


def test_a_line_named_after_a_value_with_line_breaks_is_the_rows_own_line(tmp_path):
    """A quoted value may hold line breaks (a product description, a search query) and a blank line may stand
    between records: the bad row's line is where it starts in the file, not the header plus its row number."""
    text = (
        "event_type,timestamp,user_id,item_id,query\n"  # line 1
        'search,2024-01-01T10:00:00Z,u1,,"red\nwool\nsocks"\n'  # lines 2-4
        "\n"  # line 5: blank, skipped by the reader
        "purchase,2024-01-01T10:01:00Z,u1,A,\n"  # line 6
        "purchase,yesterday,u1,B,\n"  # line 7: the bad one
    )
    path = write(tmp_path, "events.csv", text)
    with pytest.raises(DataError, match=rf"{path.name}:7: bad_timestamp"):
        load_events(path, strict=True)
    assert load_events(path).report.examples["bad_timestamp"] == [f"{path}:7"]


def test_a_file_without_required_columns_is_refused(tmp_path):
    path = write(tmp_path, "events.csv", "event_type,item_id\npurchase,A\n")
    with pytest.raises(DataError, match="missing required column.*timestamp.*user_id or session_id"):
        load_events(path)


def test_parquet_events_with_a_catalog(tmp_path):
    events = pa.table(
        {
            "event_type": ["purchase", "purchase", "purchase"],
            "timestamp": pa.array([datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 3)]),
            "user_id": ["u1", "u1", "u1"],
            "item_id": ["A", "ZZZ", "B"],
            "quantity": [1, 1, 3],
            "basket_id": ["o1", "o2", "o3"],
        }
    )
    pq.write_table(events, tmp_path / "events.parquet")
    catalog = write(
        tmp_path,
        "catalog.csv",
        "item_id,title,category,brand,price,margin,stock,regions\n"
        "A,Red mug,mugs,acme,4.5,0.4,10,GB|DE\nB,Blue lamp,lamps,lumo,30,,0,\nA,dup,x,y,1,0.1,1,\n",
    )
    dataset = load_events(tmp_path / "events.parquet", catalog)
    assert dataset.catalog.item_ids == ["A", "B"]
    assert dataset.catalog.regions == [("GB", "DE"), ()]
    assert dataset.catalog.margins.tolist() == [0.4, 0.35]  # missing margin: the documented assumption
    assert dataset.report.skipped == {"catalog_duplicate_item": 1, "unknown_item": 1}
    assert dataset.report.examples["unknown_item"] == [f"{tmp_path / 'events.parquet'}: row 2"]
    assert dataset.events.item.tolist() == [0, 1]


def test_plain_text_sequences(tmp_path):
    path = write(tmp_path, "seq.txt", "# comment\nu1 a b c\n\nu2 b\nu3\nu1 c c\nu4 c a\n")
    dataset = load_sequences(path)
    assert dataset.granularity == "item"
    assert dataset.report.rows_read == 5 and dataset.report.rows_kept == 3
    assert dict(dataset.report.skipped) == {"no_items": 1, "duplicate_user": 1}
    assert dataset.report.examples == {"no_items": [f"{path}:5"], "duplicate_user": [f"{path}:6"]}
    assert dataset.catalog.item_ids == ["a", "b", "c"]
    assert (dataset.events.kind == KIND_CODES[PURCHASE]).all() and len(dataset.events) == 6
    with pytest.raises(DataError, match=rf"{path.name}:5: no_items"):
        load_sequences(path, strict=True)


def online_retail_table(rows: list[tuple]) -> pa.Table:
    names = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
    columns = list(zip(*rows, strict=True))
    return pa.table({name: list(values) for name, values in zip(names, columns, strict=True)})


def test_online_retail_derivations_and_skips(tmp_path):
    t = datetime(2011, 1, 1, 10)
    t2 = datetime(2011, 1, 5, 12)
    table = online_retail_table(
        [
            ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, t, 2.55, 17850.0, "United Kingdom"),
            ("536365", "22423", "JUMBO BAG RED RETROSPOT", 2, t, 1.95, 17850.0, "United Kingdom"),
            ("536365", "POST", "POSTAGE", 1, t, 18.0, 17850.0, "United Kingdom"),
            ("536366", "22423", "nan", 1, t2, 2.05, float("nan"), "Unspecified"),
            ("536367", "22423", "JUMBO BAG RED RETROSPOT", 0, t2, 1.95, 17850.0, "United Kingdom"),
            ("536368", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 1, t2, 0.0, 17850.0, "United Kingdom"),
            ("C536369", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", -2, t2, 2.55, 17850.0, "United Kingdom"),
            ("C536370", "99999", "NEVER SOLD", -1, t2, 1.0, 17850.0, "United Kingdom"),
        ]
    )
    path = tmp_path / "retail.parquet"
    pq.write_table(table, path)
    assert detect_format(path) == "online-retail"
    dataset = load_online_retail(path)
    assert dict(dataset.report.skipped) == {
        "non_product_code": 1,
        "non_positive_quantity": 1,
        "non_positive_price": 1,
        "return_of_unknown_item": 1,
    }
    catalog = dataset.catalog
    assert catalog.item_ids == ["22423", "85123A"]
    assert catalog.titles == ["JUMBO BAG RED RETROSPOT", "WHITE HANGING HEART T-LIGHT HOLDER"]
    assert catalog.categories == ["BAG", "HOLDER"] and catalog.brands == ["family-224", "family-851"]
    assert catalog.prices.tolist() == [2.0, 2.55]  # median of 1.95 and 2.05
    events = dataset.events
    kinds = [EVENT_KINDS[k] for k in events.kind]
    assert kinds == [PURCHASE, PURCHASE, PURCHASE, RETURN]
    assert [events.users[u] for u in events.user] == ["17850", "17850", "guest:536366", "17850"]
    assert events.quantity.tolist() == [6, 2, 1, 2]
    assert events.region[2] == -1  # Unspecified country = unknown region
    # Countries as the codes requests send: the index lists them, and requests name them.
    assert events.regions == ["GB"]
    with pytest.raises(DataError, match=r"row 3: non_product_code"):
        load_online_retail(path, strict=True)
    without_guests = load_online_retail(path, include_guests=False)
    assert without_guests.report.skipped["guest_row"] == 1


def test_title_categories():
    assert title_category("JUMBO BAG RED RETROSPOT") == "BAG"
    assert title_category("SET OF 3 CAKE TINS") == "TIN"
    assert title_category("PAPER CHAIN KIT 50'S CHRISTMAS") == "CHRISTMAS"
    assert title_category("RED") == "OTHER"


def test_synthetic_shop_as_events():
    dataset = synthetic_dataset(users=50, items=40, seed=1)
    assert len(dataset.catalog) == 40 and dataset.granularity == "basket"
    purchases = dataset.events.of_kind(PURCHASE)
    assert purchases.any() and (dataset.events.basket[purchases] >= 0).all()
    again = load_dataset({"format": "synthetic", "users": 50, "items": 40, "seed": 1})
    assert np.array_equal(again.events.item, dataset.events.item)


def test_session_baskets_are_the_distinct_items_each_session_bought():
    from training.synthetic import EVENT_PURCHASE, EVENT_VIEW, Events, generate_shop, session_baskets

    events = Events(
        user=np.array([0, 0, 0, 0, 1, 1, 0]),
        item=np.array([5, 6, 5, 7, 5, 8, 9]),
        kind=np.array(
            [EVENT_PURCHASE, EVENT_PURCHASE, EVENT_PURCHASE, EVENT_VIEW, EVENT_PURCHASE, EVENT_VIEW, EVENT_PURCHASE],
            dtype=object,
        ),
        timestamp=np.arange(7),
        quantity=np.ones(7, dtype=np.int32),
        session=np.array([0, 0, 0, 0, 0, 0, 1]),
    )
    assert [b.tolist() for b in session_baskets(events)] == [[5, 6], [9], [5]]
    shop = generate_shop(n_users=60, n_items=40, seed=2)
    baskets = session_baskets(shop.events)
    bought = shop.events.kind == EVENT_PURCHASE
    assert sum(b.size for b in baskets) <= int(bought.sum()) and all(np.unique(b).size == b.size for b in baskets)
    assert set(np.concatenate(baskets).tolist()) == set(shop.events.item[bought].tolist())


@pytest.mark.skipif(
    not os.environ.get(ONLINE_RETAIL_ENV),
    reason=f"set {ONLINE_RETAIL_ENV} to the Online Retail parquet file to run this test (real data, not in the repo)",
)
def test_the_real_online_retail_file():
    dataset = load_online_retail(Path(os.environ[ONLINE_RETAIL_ENV]))
    report = dataset.report
    assert report.rows_read == 541_909
    assert report.rows_kept + sum(report.skipped.values()) == report.rows_read
    assert 3_500 < len(dataset.catalog) < 4_070
    # 37 countries (and Unspecified), every one a region code a request can send.
    from services.core.validation import region_problem

    regions = dataset.events.regions
    assert len(regions) == 37 and {"GB", "DE", "FR", "IE"} <= set(regions)
    assert not [r for r in regions if region_problem(r)]
    assert dataset.fingerprint.endswith("518b36c8452f511e938535aebce2c3ea051432fe999bd85e81720ebb07af5931")


RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail_csv_values_are_checked_row_by_row(tmp_path):
    """Unreadable values skip their row under a reason (or stop --strict); none gives a traceback or a NaN."""
    path = write(
        tmp_path,
        "retail.csv",
        RETAIL_HEADER
        + "536365,85123A,HEART HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        + "536365,22423,JUMBO BAG,three,2010-12-01 08:26:00,1.95,17850,United Kingdom\n"
        + "536366,22423,JUMBO BAG,2,2010-12-02 09:00:00,,17850,United Kingdom\n"
        + "536367,22423,JUMBO BAG,2,2010-12-02 09:00:00,inf,17850,United Kingdom\n"
        + "536368,22423,JUMBO BAG,2,yesterday,1.95,17850,United Kingdom\n"
        + "536369,22423,JUMBO BAG,2,2010-12-03 09:00:00,1.95,A17850,United Kingdom\n"
        + "536370,22423,JUMBO BAG,2,2010-12-03 09:00:00,1.95,,United Kingdom\n",
    )
    dataset = load_online_retail(path)
    assert dict(dataset.report.skipped) == {
        "bad_quantity": 1,
        "bad_price": 2,
        "bad_timestamp": 1,
        "bad_customer_id": 1,
    }
    assert dataset.report.examples["bad_quantity"] == [f"{path}:3"]
    assert np.isfinite(dataset.catalog.prices).all() and dataset.catalog.prices.tolist() == [1.95, 2.55]
    assert [dataset.events.users[u] for u in dataset.events.user] == ["17850", "guest:536370"]
    with pytest.raises(DataError, match=r"retail.csv:3: bad_quantity"):
        load_online_retail(path, strict=True)


def test_online_retail_reads_month_first_slashed_dates_when_the_file_says_so(tmp_path):
    rows = [
        "536365,85123A,HEART HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom",
        "536366,85123A,HEART HOLDER,1,12/13/2010 17:05,2.55,17850,United Kingdom",
    ]
    path = write(tmp_path, "retail.csv", RETAIL_HEADER + "\n".join(rows) + "\n")
    times = load_online_retail(path).events.timestamp.tolist()
    assert [datetime.fromtimestamp(t, UTC) for t in times] == [
        datetime(2010, 12, 1, 8, 26, tzinfo=UTC),
        datetime(2010, 12, 13, 17, 5, tzinfo=UTC),
    ]
    day_first = write(tmp_path, "uk.csv", RETAIL_HEADER + rows[0].replace("12/1/", "13/1/") + "\n")
    assert datetime.fromtimestamp(int(load_online_retail(day_first).events.timestamp[0]), UTC).month == 1
    ambiguous = write(tmp_path, "ambiguous.csv", RETAIL_HEADER + rows[0] + "\n")
    with pytest.raises(DataError, match="ambiguous|month/day or as day/month.*ISO 8601"):
        load_online_retail(ambiguous)


def test_an_unreadable_online_retail_column_is_one_error_with_the_fix(tmp_path):
    row = "536365,85123A,HEART HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
    path = write(tmp_path, "retail.csv", RETAIL_HEADER + row.replace(",6,", ",six,"))
    with pytest.raises(DataError, match="no Quantity value is a number"):
        load_online_retail(path)
    path = write(tmp_path, "retail.csv", RETAIL_HEADER + row.replace("2010-12-01 08:26:00", "1st December"))
    with pytest.raises(DataError, match="no InvoiceDate value is a date.*ISO 8601"):
        load_online_retail(path)


def test_files_that_are_not_what_their_name_says_are_one_error(tmp_path):
    not_parquet = write(tmp_path, "events.parquet", "event_type,timestamp,user_id,item_id\n")
    truncated = tmp_path / "truncated.parquet"
    pq.write_table(pa.table({"event_type": ["purchase"] * 50, "item_id": ["A"] * 50}), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (not_parquet, truncated):
        with pytest.raises(DataError, match="cannot read"):
            detect_format(path)
        with pytest.raises(DataError, match="cannot read"):
            load_dataset({"format": "auto", "path": str(path)})


def test_a_latin_1_csv_is_read_with_a_note(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes("event_type,timestamp,user_id,item_id\npurchase,1700000000,Jérôme,i1\n".encode("latin-1"))
    assert detect_format(path) == "events"
    dataset = load_dataset({"format": "auto", "path": str(path)})
    assert dataset.events.users == ["Jérôme"]
    assert any("not UTF-8" in note for note in dataset.report.notes)
    sequences = tmp_path / "seq.txt"
    sequences.write_bytes("Jérôme a b\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot read.*UTF-8"):
        load_sequences(sequences)


def test_catalog_values_of_the_wrong_type_are_counted(tmp_path):
    events = write(tmp_path, "events.csv", "event_type,timestamp,user_id,item_id\npurchase,1700000000,u1,A\n")
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table(
            {"item_id": ["A", "B", "C"], "margin": ["0.3", "inf", "0.2"], "regions": pa.array([None, None, None])}
        ),
        catalog,
    )
    dataset = load_events(events, catalog)
    assert dataset.catalog.item_ids == ["A", "C"] and dataset.report.skipped["catalog_bad_number"] == 1
    pq.write_table(pa.table({"item_id": ["A", "B"], "regions": [44, 7]}), catalog)
    with pytest.raises(DataError, match=r"row 1: catalog_bad_regions"):
        load_events(events, catalog, strict=True)
    with pytest.raises(DataError, match=r"no usable catalog row \(2 catalog_bad_regions\)"):
        load_events(events, catalog)
    pq.write_table(pa.table({"item_id": ["A", "B"], "regions": [["GB", "DE"], ["FR"]]}), catalog)
    assert load_events(events, catalog).catalog.regions == [("GB", "DE"), ("FR",)]
    # A region no request could name (context.region takes codes) is a bad row, not an index that never serves it.
    pq.write_table(pa.table({"item_id": ["A", "B"], "regions": ["GB|United Kingdom", "FR"]}), catalog)
    dataset = load_events(events, catalog)
    assert dataset.catalog.item_ids == ["B"] and dataset.report.skipped["catalog_bad_regions"] == 1


def test_an_event_region_requests_could_not_name_is_a_bad_row(tmp_path):
    path = write(
        tmp_path,
        "events.csv",
        "event_type,timestamp,user_id,item_id,region\n"
        "purchase,1700000000,u1,A,GB\n"
        "purchase,1700000001,u1,B,United Kingdom\n"
        "purchase,1700000002,u2,A,US-CA\n"
        "purchase,1700000003,u2,B,\n",
    )
    dataset = load_events(path)
    assert dict(dataset.report.skipped) == {"bad_region": 1} and dataset.report.examples["bad_region"] == [f"{path}:3"]
    assert dataset.events.regions == ["GB", "US-CA"] and dataset.events.region.tolist() == [0, 1, -1]
    with pytest.raises(DataError, match=r"events.csv:3: bad_region \('United Kingdom': at most 16 letters"):
        load_events(path, strict=True)


@pytest.mark.parametrize(
    ("country", "code"),
    [
        ("United Kingdom", "GB"),
        ("EIRE", "IE"),
        ("RSA", "ZA"),
        ("Channel Islands", "CHANNEL_ISLANDS"),
        ("Atlantis", "ATLANTIS"),
    ],
)
def test_online_retail_countries_are_region_codes(country, code):
    from services.core.validation import region_problem
    from training.data.loaders import _country_region

    assert _country_region(country) == code and not region_problem(code)


SHOP_CSV = "item_id,event_type,timestamp,user_id,quantity,basket_id\n" + "".join(
    f"{item},purchase,{1_700_000_000 + day * 86_400},u{user},1,o{user}-{day}\n"
    for day in range(3)
    for user in range(2)
    for item in ("000123", "000456")
)


def test_a_byte_order_mark_does_not_turn_the_first_columns_zero_padded_ids_into_numbers(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the first column's name did not match, pyarrow guessed its type, and
    000123 became the id 123, unknown to the shop, without a word."""
    path = tmp_path / "events.csv"
    path.write_bytes(b"\xef\xbb\xbf" + SHOP_CSV.encode())
    assert detect_format(path) == "events"
    dataset = load_events(path)
    assert dataset.catalog.item_ids == ["000123", "000456"] and dataset.report.rows_kept == 12
    catalog = tmp_path / "catalog.csv"
    catalog.write_bytes(b"\xef\xbb\xbfitem_id,title,price\n000123,Mug,4.5\n000456,Lamp,30\n")
    assert load_events(path, catalog).catalog.item_ids == ["000123", "000456"]
    quoted = tmp_path / "quoted.csv"  # R's write.csv(fileEncoding="UTF-8-BOM") quotes the names
    quoted.write_bytes(b"\xef\xbb\xbf" + SHOP_CSV.replace("item_id,event_type", '"item_id","event_type"').encode())
    assert load_events(quoted).catalog.item_ids == ["000123", "000456"]
    retail = tmp_path / "retail.csv"
    for header in (b"InvoiceNo,StockCode,Description", b'"InvoiceNo","StockCode","Description"'):
        retail.write_bytes(b"\xef\xbb\xbf" + header + b",Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n")
        assert detect_format(retail) == "online-retail"


def test_an_id_the_servers_would_refuse_is_a_skipped_row_not_a_failed_export_after_training(tmp_path):
    """A no-break space pasted into an id passed the loaders; the export refused it after the whole fit."""
    path = write(tmp_path, "events.csv", SHOP_CSV.replace("000456,purchase", "000\u00a0456,purchase", 1))
    dataset = load_events(path)
    assert dataset.report.skipped == {"bad_item_id": 1} and "000\u00a0456" not in dataset.catalog.item_ids
    with pytest.raises(DataError, match=r"events.csv:3: bad_item_id \('000\\xa0456' must contain printable"):
        load_events(path, strict=True)
    catalog = write(tmp_path, "catalog.csv", "item_id,title\n000123,Mug\n000\u200b456,Lamp\n")
    assert load_events(write(tmp_path, "e.csv", SHOP_CSV), catalog).report.skipped["catalog_bad_item_id"] == 1
    sequences = load_sequences(write(tmp_path, "seq.txt", "u1 a b\nu2 a \u200bb\n"))
    assert sequences.report.skipped == {"bad_item_id": 1} and sequences.catalog.item_ids == ["a", "b"]


@pytest.mark.parametrize(("scale", "unit"), [(1_000, "milliseconds"), (1_000_000, "microseconds")])
def test_epoch_timestamps_in_finer_units_are_read_as_such_and_said(tmp_path, scale, unit):
    """Millisecond epochs (JavaScript, Segment, Snowplow) were taken for seconds: the year 55,000, every day-based
    window shrunk a thousandfold, and `aisle refresh-features` failed on them."""
    text = "".join(
        line if i == 0 else line.replace(f",{stamp},", f",{stamp * scale},")
        for i, line in enumerate(SHOP_CSV.splitlines(keepends=True))
        for stamp in [int(line.split(",")[2]) if i else 0]
    )
    dataset = load_events(write(tmp_path, "events.csv", text))
    assert dataset.events.timestamp.min() == 1_700_000_000 and dataset.events.timestamp.max() == 1_700_172_800
    assert f"12 timestamps read as {unit} since the epoch" in " ".join(dataset.report.notes)


def test_parquet_timestamps_to_the_nanosecond_load_without_pandas(tmp_path):
    events = pa.table(
        {
            "event_type": ["purchase", "purchase"],
            "timestamp": pa.array([1_700_000_000_123_456_789, 1_700_086_400_987_654_321], pa.timestamp("ns", tz="UTC")),
            "user_id": ["u1", "u1"],
            "item_id": ["A", "B"],
        }
    )
    pq.write_table(events, tmp_path / "events.parquet")
    dataset = load_events(tmp_path / "events.parquet")
    assert dataset.events.timestamp.tolist() == [1_700_000_000, 1_700_086_400]
