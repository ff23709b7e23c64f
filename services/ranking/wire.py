"""The ``scored_items`` of a :class:`RankResponse` written straight into protobuf wire format with numpy.

A Rank answer carries hundreds of ``ScoredItem`` messages; adding them one by one from Python costs about half a
microsecond each, more than the model spends scoring them. :func:`encode_scored_items` writes every item's bytes
with a few array operations instead, and the servicer merges them into the response with one ``MergeFromString``
(parsed in C). The answer is the same message: ``tests/unit/ranking/test_wire.py`` compares it with the one built
field by field, unknown candidates, non-ASCII ids and long ids included.

Wire format (https://protobuf.dev/programming-guides/encoding/), per candidate::

    0x0A <size>                       RankResponse.scored_items (field 1, length-delimited)
      0x0A <n> <n id bytes>           ScoredItem.item_id (field 1, UTF-8)
      0x15 <4 bytes>                  ScoredItem.purchase_probability (field 2, float32 little-endian)
      0x1D <4 bytes>                  ScoredItem.return_probability (field 3), only where it is set

Both lengths are written as one-byte varints, so an item must fit in 127 bytes: ids of up to
:data:`MAX_FAST_ID_BYTES` bytes. A request with a longer id is answered by the field-by-field path instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ITEM_TAG = 0x0A  # RankResponse.scored_items = 1, wire type 2
_ID_TAG = 0x0A  # ScoredItem.item_id = 1, wire type 2
_PURCHASE_TAG = 0x15  # ScoredItem.purchase_probability = 2, wire type 5 (32-bit)
_RETURN_TAG = 0x1D  # ScoredItem.return_probability = 3, wire type 5
_FLOAT_FIELD = 5  # tag + 4 bytes
#: Longest id (in UTF-8 bytes) whose item still fits one-byte varint lengths (127) with both probabilities.
MAX_FAST_ID_BYTES = 127 - 2 - 2 * _FLOAT_FIELD
_LITTLE_F32 = np.dtype("<f4")


def encode_scored_items(
    item_ids: Sequence[str],
    purchase: np.ndarray,
    returns: np.ndarray | None = None,
    has_return: np.ndarray | None = None,
) -> bytes | None:
    """``RankResponse.scored_items`` for ``item_ids`` in order, as wire bytes; None when an id is too long.

    ``purchase`` and ``returns`` are float [C]; ``returns`` None leaves every return probability unset, and
    ``has_return`` (bool [C]) sets it only where True.
    """
    count = len(item_ids)
    if count == 0:
        return b""
    text = "".join(item_ids)
    raw = text.encode("utf-8")
    if len(raw) == len(text):  # ASCII: characters are bytes
        id_bytes = np.fromiter(map(len, item_ids), dtype=np.int64, count=count)
    else:
        id_bytes = np.fromiter((len(i.encode("utf-8")) for i in item_ids), dtype=np.int64, count=count)
    if int(id_bytes.max()) > MAX_FAST_ID_BYTES:
        return None
    if returns is not None and has_return is None:
        has_return = np.ones(count, dtype=bool)
    item_size = 2 + id_bytes + _FLOAT_FIELD
    if returns is not None:
        item_size += _FLOAT_FIELD * has_return
    ends = np.cumsum(item_size + 2)
    starts = ends - (item_size + 2)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    out[starts] = _ITEM_TAG
    out[starts + 1] = item_size
    out[starts + 2] = _ID_TAG
    out[starts + 3] = id_bytes
    id_starts = starts + 4
    # Byte k of the joined ids lands at id_starts[item] + (k - where that item's id starts in the joined ids).
    shift = id_starts - (np.cumsum(id_bytes) - id_bytes)
    out[np.arange(len(raw)) + np.repeat(shift, id_bytes)] = np.frombuffer(raw, dtype=np.uint8)
    purchase_at = id_starts + id_bytes
    _put_floats(out, purchase_at, _PURCHASE_TAG, purchase)
    if returns is not None and has_return.any():
        _put_floats(out, purchase_at[has_return] + _FLOAT_FIELD, _RETURN_TAG, returns[has_return])
    return out.tobytes()


def _put_floats(out: np.ndarray, at: np.ndarray, tag: int, values: np.ndarray) -> None:
    out[at] = tag
    out[at[:, None] + np.arange(1, 5)] = np.ascontiguousarray(values, dtype=_LITTLE_F32).view(np.uint8).reshape(-1, 4)
