"""One-id-per-line files: what writers refuse, and that readers give back exactly what was written."""

from __future__ import annotations

import pytest

from services.core.id_lines import format_id_lines, id_list_problem, read_id_lines


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (["a", "", "c"], "item id 1 ('') must not be empty"),
        (["a", "b\u2028c"], "item id 1 ('b\\u2028c') must contain printable characters only"),
        (["a", "b\nc"], "must contain printable characters only"),
        (["a", "x" * 257], "must be at most 256 characters"),
        (["a", "b", "a"], "item ids must be unique"),
    ],
)
def test_ids_a_line_could_not_hold_are_refused_naming_the_first(ids, problem):
    assert problem in id_list_problem(ids, "item id")


def test_what_is_written_reads_back_in_order(tmp_path):
    ids = ["I00001", "Ü-2", "a b", "85123A"]
    assert id_list_problem(ids, "item id") is None
    path = tmp_path / "ids.txt"
    path.write_text(format_id_lines(ids), encoding="utf-8")
    assert read_id_lines(path) == ids
    path.write_bytes(b"a\nb")  # the last newline is optional
    assert read_id_lines(path) == ["a", "b"]
