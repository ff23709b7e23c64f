"""The index's one-id-per-line files are written and read with one rule: ids the servers' id rule refuses are not
written (no line break of any kind), lines are split on "\\n" only, and an empty line is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from services.retrieval.index import (
    COVISITATION_ANCHORS_FILE,
    IDS_FILE,
    REGIONS_FILE,
    InvalidIndex,
    load_index,
    save_index,
)
from tests.support.retrieval import covisitation_table
from tests.unit.retrieval.test_index import replace_file

COUNT = 10
#: What str.splitlines splits on besides "\n" (and "\t", not a line break but not printable either).
BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\t"]


def write(root, ids=None, **extra):
    ids = ids if ids is not None else [f"i{n}" for n in range(COUNT)]
    return save_index(
        root,
        item_ids=ids,
        embeddings=np.eye(len(ids), 4, dtype=np.float32) + 0.1,
        popularity=np.ones(len(ids)),
        categories=["c"] * len(ids),
        brands=["b"] * len(ids),
        model_name="m",
        model_version="1",
        **extra,
    )


@pytest.mark.parametrize("separator", BREAKS, ids=repr)
def test_an_item_id_a_reader_would_split_is_refused_before_writing(tmp_path, separator):
    ids = [f"i{n}" for n in range(COUNT)]
    ids[3] = f"i3{separator}x"
    with pytest.raises(ValueError, match=r"item id 3 \('i3.*x'\) must contain printable characters only") as refusal:
        write(tmp_path, ids)
    assert "\n" not in str(refusal.value) and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"regions": ["GB", "D\u2028E"], "sold_in": np.ones((COUNT, 2), dtype=bool)}, "region 1"),
        (
            {"covisitation": covisitation_table(3), "covisitation_anchors": ["a", "b\rc", "d"]},
            "co-visitation anchor id 1",
        ),
        ({"regions": ["GB", ""], "sold_in": np.ones((COUNT, 2), dtype=bool)}, "region 1 .* must not be empty"),
    ],
)
def test_regions_and_anchor_ids_follow_the_same_rule(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path, **extra)
    assert not list(tmp_path.iterdir())


def test_a_too_long_or_empty_item_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="item id 2 .* must be at most 256 characters"):
        write(tmp_path, [*(f"i{n}" for n in range(2)), "x" * 257])
    with pytest.raises(ValueError, match="item id 1 .* must not be empty"):
        write(tmp_path, ["a", "", "b"])


def test_ids_with_line_separators_other_than_newline_read_back_as_written(tmp_path):
    """An index written before the writers applied the id rule keeps loading, with the ids it holds."""
    path = write(tmp_path)
    ids = [f"i{n}" for n in range(COUNT)]
    ids[3], ids[5], ids[7] = "i3\u2028x", "i5\x85", "i7\x0b"
    replace_file(path, IDS_FILE, ("\n".join(ids) + "\n").encode())
    assert load_index(path).item_ids == ids


@pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=repr)
def test_a_carriage_return_no_writer_writes_is_refused_by_line(tmp_path, ending):
    """Text mode would read a lone carriage return as a line break, and drop one before a newline."""
    path = write(tmp_path)
    replace_file(path, IDS_FILE, ending.join(f"i{n}" for n in range(COUNT)).encode() + b"\n")
    with pytest.raises(InvalidIndex, match=f"{IDS_FILE}: line 1 holds a carriage return") as refusal:
        load_index(path)
    assert "\n" not in str(refusal.value)


def test_the_last_newline_is_optional(tmp_path):
    path = write(tmp_path)
    replace_file(path, IDS_FILE, "\n".join(f"i{n}" for n in range(COUNT)).encode())
    assert load_index(path).item_ids == [f"i{n}" for n in range(COUNT)]


@pytest.mark.parametrize("name", [IDS_FILE, REGIONS_FILE, COVISITATION_ANCHORS_FILE])
def test_an_empty_line_is_refused_naming_the_file_and_line(tmp_path, name):
    count = 3
    path = write(
        tmp_path,
        [f"i{n}" for n in range(count)],
        regions=["GB", "DE", "FR"],
        sold_in=np.ones((count, 3), dtype=bool),
        covisitation=covisitation_table(3),
        covisitation_anchors=["a", "b", "c"],
    )
    lines = (path / name).read_text().split("\n")
    lines[1] = ""  # the same number of lines: a reader that kept it would shift nothing, but name no item
    replace_file(path, name, "\n".join(lines).encode())
    with pytest.raises(InvalidIndex, match=f"{name}: line 2 is empty") as refusal:
        load_index(path)
    assert "\n" not in str(refusal.value)
