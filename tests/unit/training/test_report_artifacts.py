"""``aisle evaluate`` on a run whose artefacts moved: one line that says where, before any data is read."""

from __future__ import annotations

import json

from click.testing import CliRunner

from services.cli import main


def run_record(tmp_path, ranker_version: str = "2") -> dict:
    ranker = tmp_path / "repo" / "sequence_ranker" / ranker_version
    index = tmp_path / "artifacts" / "index" / "20260101T000000Z"
    tower = tmp_path / "artifacts" / "query_tower" / "20260101T000000Z" / "query_tower.onnx"
    for folder in (ranker, index, tower.parent):
        folder.mkdir(parents=True)
    tower.write_bytes(b"onnx")
    # The data must never be read: a path that does not exist would fail later, with another message.
    record = {
        "data": {"format": "synthetic", "path": str(tmp_path / "never-read.parquet")},
        "ranker_dir": str(ranker),
        "index_dir": str(index),
        "query_tower": str(tower),
    }
    (tmp_path / "artifacts" / "training_run.json").write_text(json.dumps(record), encoding="utf-8")
    return record


def evaluate(tmp_path):
    return CliRunner().invoke(main, ["evaluate", "--artifacts", str(tmp_path / "artifacts"), "--no-progress"])


def test_a_run_whose_ranker_version_was_rolled_back_names_where_it_went(tmp_path):
    record = run_record(tmp_path)
    retired = tmp_path / "repo" / "sequence_ranker" / ".retired-2-1765000000"
    (tmp_path / "repo" / "sequence_ranker" / "2").rename(retired)
    result = evaluate(tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"ranker version {record['ranker_dir']} was retired (now {retired}" in result.output


def test_a_run_whose_index_is_gone_says_so(tmp_path):
    record = run_record(tmp_path)
    (tmp_path / "artifacts" / "index" / "20260101T000000Z").rmdir()
    result = evaluate(tmp_path)
    assert result.exit_code == 1 and f"index version {record['index_dir']} is gone" in result.output, result.output
