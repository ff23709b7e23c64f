"""RankResponse.scored_items written as wire bytes: the same message as the one built field by field."""

from __future__ import annotations

import numpy as np
import pytest

from aisle.ranking.v1 import ranking_service_pb2 as pb
from services.ranking.backends.base import Ranking
from services.ranking.servicer import add_scored_items
from services.ranking.wire import MAX_FAST_ID_BYTES, encode_scored_items


def field_by_field(ids, purchase, returns=None, has_return=None) -> pb.RankResponse:
    response = pb.RankResponse()
    for i, item_id in enumerate(ids):
        scored = response.scored_items.add(item_id=item_id, purchase_probability=float(purchase[i]))
        if returns is not None and (has_return is None or has_return[i]):
            scored.return_probability = float(returns[i])
    return response


def from_wire(ids, purchase, returns=None, has_return=None) -> pb.RankResponse:
    encoded = encode_scored_items(ids, purchase, returns, has_return)
    assert encoded is not None
    response = pb.RankResponse()
    response.MergeFromString(encoded)
    return response


def assert_same(ids, purchase, returns=None, has_return=None) -> None:
    want = field_by_field(ids, purchase, returns, has_return)
    got = from_wire(ids, purchase, returns, has_return)
    assert got == want
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert [s.HasField("return_probability") for s in got.scored_items] == [
        s.HasField("return_probability") for s in want.scored_items
    ]


@pytest.mark.parametrize("with_returns", [False, True])
def test_many_items_with_and_without_return_probabilities(with_returns):
    rng = np.random.default_rng(0)
    ids = [f"sku-{i}" * int(rng.integers(1, 4)) for i in rng.integers(0, 10**6, size=700)]
    purchase = rng.random(700).astype(np.float32)
    purchase[:5] = [0.0, 1.0, 1e-30, 0.5, -0.0]
    returns = rng.random(700).astype(np.float32) if with_returns else None
    has_return = rng.random(700) > 0.2 if with_returns else None
    assert_same(ids, purchase, returns, has_return)


def test_returns_for_every_item_when_no_mask_is_given():
    assert_same(["a", "b", "c"], np.array([0.1, 0.2, 0.3], np.float32), np.array([0.4, 0.5, 0.6], np.float32))


def test_float64_scores_are_written_as_float32():
    assert_same(["a", "b"], np.array([0.1, 0.7]), np.array([0.3, 0.9]), np.array([True, False]))


def test_non_ascii_ids_are_utf8_and_lengths_are_bytes():
    ids = ["café", "商品-42", "plain", "🧦-sock", "Ünïcödé-" * 3]
    assert_same(ids, np.linspace(0, 1, len(ids), dtype=np.float32))


def test_the_longest_fast_id_fits_and_a_longer_one_is_left_to_the_field_by_field_path():
    purchase = np.array([0.25, 0.75], np.float32)
    returns = np.array([0.5, 0.5], np.float32)
    longest = "x" * MAX_FAST_ID_BYTES
    assert_same(["a", longest], purchase, returns)
    assert encode_scored_items(["a", longest + "x"], purchase, returns) is None
    # Characters are not bytes: 40 three-byte characters are 120 bytes.
    assert encode_scored_items(["a", "商" * 40], purchase) is None


def test_no_items_is_no_bytes():
    assert encode_scored_items([], np.zeros(0, np.float32)) == b""


@pytest.mark.parametrize("id_length", [8, 200])
def test_the_servicer_answers_the_same_on_both_paths(id_length):
    """Unknown candidates get no return probability; ids too long for the wire path take the field-by-field one."""
    ids = [f"{i:0{id_length}d}" for i in range(6)]
    unknown = np.array([False, True, False, False, True, False])
    purchase = np.where(unknown, 0, np.linspace(0.1, 0.9, 6)).astype(np.float32)
    returns = np.linspace(0.2, 0.7, 6).astype(np.float32)
    ranking = Ranking("m", "1", purchase, returns, unknown, "onnxruntime")
    response = pb.RankResponse()
    add_scored_items(response, ids, ranking)
    assert response == field_by_field(ids, purchase, returns, ~unknown)
    assert [s.HasField("return_probability") for s in response.scored_items] == list(~unknown)
    without_head = pb.RankResponse()
    add_scored_items(without_head, ids, Ranking("m", "1", purchase, None, unknown, "onnxruntime"))
    assert without_head == field_by_field(ids, purchase)
