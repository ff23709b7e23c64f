"""Files of ids, one per line (an index's ``item_ids.txt`` and ``regions.txt``, a ranker's ``item_vocabulary.txt``):
one rule for the writers and one for the readers, since a line's position is the id's row or token.

Writers check the ids first (:func:`id_list_problem`): non-empty, unique, and passing the servers' own id rule
(:func:`services.core.validation.id_problem`), which refuses line breaks of every kind. Readers split on the newline
character only, the writers' separator (``str.splitlines`` also splits on U+2028, U+0085 and more, and text mode
turns a carriage return into a newline), and refuse an empty line, which would shift every later id by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.core.validation import id_problem


def id_list_problem(ids: Sequence[str], what: str) -> str | None:
    """What is wrong with ``ids`` as the lines of such a file (``what`` names one, e.g. "item id"), or None."""
    for position, value in enumerate(ids):
        problem = "must not be empty" if not value else id_problem(value)
        if problem is not None:
            return f"{what} {position} ({value[:40]!r}) {problem}"
    if len(set(ids)) != len(ids):
        return f"{what}s must be unique"
    return None


def format_id_lines(ids: Sequence[str]) -> str:
    """The text of the file: one id per line, each ended by a newline."""
    return "".join(f"{value}\n" for value in ids)


def read_id_lines(path: Path) -> list[str]:
    """The ids of a file written by :func:`format_id_lines`; ValueError naming the line when one is empty or holds
    a carriage return (a file given CRLF line endings by hand)."""
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "" in lines:
        raise ValueError(
            f"line {lines.index('') + 1} is empty: every id after it would take the wrong row or token (ids are "
            "non-empty, one per line)"
        )
    if "\r" in text:
        number = next(n for n, line in enumerate(lines, 1) if "\r" in line)
        raise ValueError(f"line {number} holds a carriage return (CRLF line endings?): ids end at \\n alone")
    return lines
