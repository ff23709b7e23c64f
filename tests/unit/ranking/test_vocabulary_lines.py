"""``item_vocabulary.txt`` is read as it is written: one id per "\\n"-separated line. An empty line (a gap in the
catalog data) would shift every later token by one, so it is refused by line number, by the servers and by
`aisle models validate` alike, even where no metadata.json records the item count."""

from __future__ import annotations

import logging

import pytest

from services.ranking.backends.onnxruntime import BatchingOptions, OnnxRuntimeBackend
from services.ranking.features import ItemVocabulary
from services.ranking.model_config import VOCABULARY_FILE
from services.ranking.repository import validate_path
from tests.integration.ranking.tiny_models import add_version, item_ids, tiny_repository


def vocabulary_of(tmp_path, text: str) -> ItemVocabulary:
    path = tmp_path / VOCABULARY_FILE
    path.write_bytes(text.encode("utf-8"))
    return ItemVocabulary.read(path)


@pytest.mark.parametrize("text", ["a\n\nb\nc\n", "\na\nb\n", "a\nb\n\n", "\n"], ids=repr)
def test_an_empty_line_is_refused_by_number(tmp_path, text):
    with pytest.raises(ValueError, match=r"line \d is empty: every id after it would take the wrong row or token"):
        vocabulary_of(tmp_path, text)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"], ids=repr)
def test_only_newline_separates_ids(tmp_path, separator):
    """Ids with other line separators (written before the exporter refused them) keep their tokens."""
    ids = ["a", f"b{separator}x", "c"]
    vocabulary = vocabulary_of(tmp_path, "\n".join(ids) + "\n")
    assert len(vocabulary) == 3 and vocabulary.tokens(ids).tolist() == [1, 2, 3]


@pytest.mark.parametrize("text", ["a\r\nb\r\n", "a\rb\n"], ids=repr)
def test_a_carriage_return_is_refused_by_number(tmp_path, text):
    with pytest.raises(ValueError, match="line 1 holds a carriage return"):
        vocabulary_of(tmp_path, text)


def test_the_last_newline_is_optional_and_an_empty_file_has_no_items(tmp_path):
    assert vocabulary_of(tmp_path, "a\nb").tokens(["a", "b"]).tolist() == [1, 2]
    assert len(vocabulary_of(tmp_path, "")) == 0


def with_a_gap(folder, line: int = 51) -> None:
    """Blanks one line of a version's vocabulary, as a gap in the catalog data would."""
    path = folder / VOCABULARY_FILE
    lines = path.read_text().split("\n")
    lines[line - 1] = ""
    path.write_text("\n".join(lines))


def test_models_validate_refuses_a_vocabulary_with_an_empty_line(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}})
    folder = repository / "ranker" / "1"
    assert not (folder / "metadata.json").exists()  # nothing records the item count
    with_a_gap(folder)
    report = validate_path(folder)
    assert not report.ok
    assert any(f"{VOCABULARY_FILE}: line 51 is empty" in problem for problem in report.problems)


async def test_a_version_with_an_empty_vocabulary_line_is_refused_and_the_previous_one_keeps_serving(tmp_path, caplog):
    repository = tiny_repository(tmp_path, {1: {}})
    backend = OnnxRuntimeBackend(repository, "ranker", batching=BatchingOptions(enabled=False))
    await backend.load()
    try:
        with_a_gap(add_version(repository / "ranker", 2))
        with caplog.at_level(logging.ERROR, logger="services.ranking.backends.onnxruntime"):
            assert not await backend.refresh()
        assert backend.model_version == "1" and "line 51 is empty" in caplog.text
        ranking = await backend.rank([], item_ids(60), None)
        assert ranking.model_version == "1"
    finally:
        await backend.close()
