from __future__ import annotations

from datetime import UTC

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from aisle.common.v1 import common_pb2 as common
from services.core.errors import InvalidArgument, status_for
from services.core.validation import (
    MAX_ATTRIBUTE_VALUE_LENGTH,
    MAX_ATTRIBUTES,
    MAX_ID_LENGTH,
    MAX_TIMESTAMP_NANOS,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    Violations,
    _trailer_bytes,
    label_problem,
)


def violations_of(check: Violations) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as error:
        check.raise_if_any()
    return error.value.violations


def test_nothing_wrong_raises_nothing():
    check = Violations()
    check.id("item", "SKU1")
    check.k("k", 10, limit=100)
    check.subject("subject", common.Subject(user_id="u"))
    check.raise_if_any()


def test_ids_are_checked_one_by_one_with_their_index():
    check = Violations()
    check.ids("anchor_item_ids", ["ok", "", "x" * (MAX_ID_LENGTH + 1), "tab\there"], limit=10)
    found = violations_of(check)
    assert set(found) == {"anchor_item_ids[1]", "anchor_item_ids[2]", "anchor_item_ids[3]"}


def test_too_many_ids_is_one_violation_not_thousands():
    check = Violations()
    check.ids("exclusions.item_ids", ["a"] * 11, limit=10)
    assert violations_of(check) == {"exclusions.item_ids": "must have at most 10 entries, got 11"}


def test_subject_must_be_set_when_required():
    check = Violations()
    check.subject("subject", common.Subject())
    assert "subject" in violations_of(check)
    optional = Violations()
    optional.subject("subject", common.Subject(), required=False)
    optional.raise_if_any()


def test_history_checks_ids_and_quantities():
    history = [common.Interaction(item_id="a"), common.Interaction(item_id="b", quantity=-2)]
    check = Violations()
    check.history("history", history, limit=5)
    assert set(violations_of(check)) == {"history[1].quantity"}


def test_enum_numbers_no_version_of_the_contract_defines_are_refused_unset_ones_are_not():
    """An event type or a device of 99 passed every service and meant nothing (TrackEvents refused it alone)."""
    history = [
        common.Interaction(item_id="a"),  # unset: EVENT_TYPE_UNSPECIFIED
        common.Interaction(item_id="b", event_type=common.EVENT_TYPE_PURCHASE),
        common.Interaction(item_id="c", event_type=99),
    ]
    check = Violations()
    check.history("history", history, limit=5)
    check.context("context", common.RequestContext(device=77))
    check.context("fine", common.RequestContext(device=common.DEVICE_MOBILE))
    found = violations_of(check)
    assert set(found) == {"history[2].event_type", "context.device"}
    assert "EVENT_TYPE_PURCHASE" in found["history[2].event_type"] and found["context.device"].endswith("got 77")


@pytest.mark.parametrize("value", [-1, 101, 10**6])
def test_k_out_of_range(value):
    check = Violations()
    check.k("k", value, limit=100)
    assert "k" in violations_of(check)


@pytest.mark.parametrize("value", [0, 1, 100])
def test_k_within_range_including_both_bounds(value):
    # 0 asks for the server default; the limit itself is allowed: the range is inclusive at both ends.
    check = Violations()
    check.k("k", value, limit=100)
    check.raise_if_any()


def test_enum_lists_the_allowed_names():
    check = Violations()
    names = {v: n for n, v in common.Surface.items()}
    check.enum("surface", 42, [common.SURFACE_HOME], names)
    assert violations_of(check)["surface"] == "must be one of SURFACE_HOME, got 42"


@pytest.mark.parametrize(
    ("region", "ok"), [("GB", True), ("en-GB", True), ("", True), ("G B", False), ("X" * 40, False)]
)
def test_region(region, ok):
    check = Violations()
    check.region("context.region", region)
    assert bool(check) is not ok


def test_thousands_of_violations_list_the_first_and_count_the_rest():
    from services.core.validation import MAX_REPORTED_VIOLATIONS

    check = Violations()
    check.ids("exclusions.item_ids", ["\x00"] * 5000, limit=5000)
    with pytest.raises(InvalidArgument) as error:
        check.raise_if_any()
    assert len(error.value.violations) == MAX_REPORTED_VIOLATIONS
    assert "exclusions.item_ids[0]" in error.value.violations
    assert error.value.message.endswith(f"and {5000 - MAX_REPORTED_VIOLATIONS} more violations not listed")


def test_exclusions_count_items_brands_and_categories_together_then_check_each_item_id():
    too_many = common.Exclusions(item_ids=["a", "b"], brands=["x"], categories=["y", "z"])
    check = Violations()
    check.exclusions("exclusions", too_many, limit=4)
    assert violations_of(check) == {"exclusions": "must have at most 4 entries in all, got 5"}
    check = Violations()
    check.exclusions("exclusions", common.Exclusions(item_ids=["ok", ""], brands=["x"]), limit=4)
    assert set(violations_of(check)) == {"exclusions.item_ids[1]"}
    check = Violations()
    check.exclusions("exclusions", common.Exclusions(item_ids=["ok"], categories=["y"]), limit=4)
    check.raise_if_any()


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (MIN_TIMESTAMP_SECONDS, 0),  # 0001-01-01T00:00:00Z
        (MAX_TIMESTAMP_SECONDS, MAX_TIMESTAMP_NANOS),  # 9999-12-31T23:59:59.999999999Z
        (0, 0),  # unset: the epoch
        (-1, 500_000_000),  # before the epoch, nanos still count forward
    ],
)
def test_timestamps_within_protobufs_range_pass(seconds, nanos):
    check = Violations()
    check.timestamp("event_time", Timestamp(seconds=seconds, nanos=nanos))
    check.raise_if_any()
    Timestamp(seconds=seconds, nanos=nanos).ToDatetime(UTC)  # what the gateway's filter does with one


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (MIN_TIMESTAMP_SECONDS - 1, 0),
        (MAX_TIMESTAMP_SECONDS + 1, 0),
        (2**40, 0),
        (-(2**63), 0),
        (2**63 - 1, 0),
        (0, -1),
        (0, MAX_TIMESTAMP_NANOS + 1),
        (-1, -(2**31)),
    ],
)
def test_timestamps_outside_protobufs_range_are_named(seconds, nanos):
    value = Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(ValueError):
        value.ToDatetime(UTC)  # why it matters: what reads it later fails
    check = Violations()
    check.timestamp("events[0].event_time", value)
    assert set(violations_of(check)) == {"events[0].event_time"}


def test_history_checks_each_event_time():
    history = [
        common.Interaction(item_id="a", event_time=Timestamp(seconds=1_700_000_000)),
        common.Interaction(item_id="b", event_time=Timestamp(seconds=2**40)),
        common.Interaction(item_id="c", event_time=Timestamp(nanos=-1)),
    ]
    check = Violations()
    check.history("history", history, limit=5)
    assert set(violations_of(check)) == {"history[1].event_time", "history[2].event_time"}


def test_context_checks_region_request_time_and_attributes():
    fine = common.RequestContext(region="GB", attributes={"page": "home"})
    fine.request_time.FromSeconds(1_700_000_000)
    check = Violations()
    check.context("context", fine)
    check.context("unset", common.RequestContext())
    check.raise_if_any()
    bad = common.RequestContext(region="R" * 1000, attributes={"page": "x" * 10_000})
    bad.request_time.seconds = -(2**40)
    check = Violations()
    check.context("context", bad)
    assert set(violations_of(check)) == {"context.region", "context.request_time", "context.attributes['page']"}


def test_attributes_are_bounded_in_number_key_and_value():
    largest = {f"{i:0{MAX_ID_LENGTH}d}": "v" * MAX_ATTRIBUTE_VALUE_LENGTH for i in range(MAX_ATTRIBUTES)}
    check = Violations()
    check.attributes("context.attributes", largest)
    check.attributes("empty", {})
    check.attributes("empty_value", {"k": ""})
    check.raise_if_any()
    check = Violations()
    check.attributes("context.attributes", {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)})
    assert violations_of(check) == {"context.attributes": f"must have at most {MAX_ATTRIBUTES} entries, got 33"}
    check = Violations()
    check.attributes(
        "a",
        {
            "": "v",
            "k" * (MAX_ID_LENGTH + 1): "v",
            "tab\tkey": "v",
            "long": "v" * (MAX_ATTRIBUTE_VALUE_LENGTH + 1),
            "odd": "\x00",
            "fine": "Mozilla/5.0 (X11; Linux x86_64)",
        },
    )
    found = violations_of(check)
    assert set(found) == {"a['']", f"a[{'k' * 32!r}]", "a['tab\\tkey']", "a['long']", "a['odd']"}
    assert found[f"a[{'k' * 32!r}]"] == f"key must be at most {MAX_ID_LENGTH} characters, got {MAX_ID_LENGTH + 1}"


def test_exclusions_check_each_brand_and_category_as_a_label():
    exclusions = common.Exclusions(
        item_ids=["ok"],
        # Spaces of any script belong in a brand's or category's name; control characters do not.
        brands=["b", "x" * (MAX_ID_LENGTH + 1), "Dr.\xa0Martens", "ユニクロ\u3000ジャパン"],
        categories=["", "c", "new\nline", "tab\there", "soft\xadhyphen"],
    )
    check = Violations()
    check.exclusions("exclusions", exclusions, limit=20)
    assert set(violations_of(check)) == {
        "exclusions.brands[1]",
        "exclusions.categories[0]",
        "exclusions.categories[2]",
        "exclusions.categories[3]",
        "exclusions.categories[4]",
    }


def test_a_label_allows_spaces_of_any_script_and_refuses_control_format_and_line_separators():
    for fine in ["Dr.\xa0Martens", "ユニクロ\u3000ジャパン", "plain", "v" * MAX_ID_LENGTH]:
        assert label_problem(fine) is None, fine
    for bad in ["a\tb", "a\nb", "a\u2028b", "a\u200bb", "\x00", "v" * (MAX_ID_LENGTH + 1)]:
        assert label_problem(bad) is not None, ascii(bad)


def test_the_listed_violations_fit_in_grpcs_trailer_whatever_characters_callers_send():
    """32 attribute keys of emoji, each with a value past its limit: every listed field name and the message stay
    ASCII and within the byte budget, so the trailer stays under gRPC's 8 KiB soft limit (it was 17.7 KB, and the
    caller got RESOURCE_EXHAUSTED naming nothing)."""
    keys = {"\U0001f600" * 31 + chr(0x1F601 + i): "v" * (MAX_ATTRIBUTE_VALUE_LENGTH + 1) for i in range(MAX_ATTRIBUTES)}
    check = Violations()
    check.context("context", common.RequestContext(region="é" * 40, attributes=keys))
    with pytest.raises(InvalidArgument) as refused:
        check.raise_if_any()
    error = refused.value
    assert "context.region" in error.violations and error.message.isascii()
    assert 1 < len(error.violations) < MAX_ATTRIBUTES + 1 and "more violations not listed" in error.message
    # On the wire: grpc-message (the message, percent-encoded outside printable ASCII) and the -bin trailers in
    # base64.
    status = status_for(error)
    # base64, and gRPC counts 32 bytes more per entry.
    entries = [("grpc-message", "x" * _trailer_bytes(status.details)), *status.trailing_metadata]
    trailer = sum(
        32 + len(key) + (4 * -(-len(value) // 3) if key.endswith("-bin") else len(value)) for key, value in entries
    )
    assert trailer < 6 * 1024, trailer
