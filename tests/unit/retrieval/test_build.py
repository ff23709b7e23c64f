"""Tuning a ScaNN build to a recall target: the curve it measures and the leaves it keeps."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.retrieval.build import (
    RecallPoint,
    TargetRecallUnreachable,
    choose_leaves,
    searcher_for,
    spot_check_recall,
)
from services.retrieval.index import METADATA_FILE, InvalidIndex, latest_version, load_index
from services.retrieval.index_cli import BuildPlan
from services.retrieval.index_cli import index as index_cli
from tests.support.retrieval import write_index

CURVE = [RecallPoint(10, 0.52, 60.0), RecallPoint(40, 0.88, 90.0), RecallPoint(80, 0.97, 140.0)]


def test_the_fewest_leaves_reaching_the_target_are_chosen():
    assert choose_leaves(CURVE, 0.9, 100) == 80
    assert choose_leaves(CURVE, 0.88, 100) == 40  # reaching the target exactly counts
    assert choose_leaves(list(reversed(CURVE)), 0.5, 100) == 10  # whatever order the curve comes in


def test_a_build_plan_sizes_each_parts_tree_and_takes_the_options_given():
    plan = BuildPlan(ann="scann", shards=1, leaves=None, search_fraction=0.1, target_recall=None, pre_reorder=500)
    config = plan.scann_config(1_000_000)
    assert (config.num_leaves, config.leaves_to_search) == (2000, 200)  # 2 sqrt(n) leaves, a tenth searched
    assert config.pre_reorder_num_neighbors == config.reorder_num_neighbors == 500
    plan = BuildPlan(ann="scann", shards=1, leaves=300, search_fraction=0.25, target_recall=None, pre_reorder=100)
    assert (plan.scann_config(1_000_000).num_leaves, plan.scann_config(1_000_000).leaves_to_search) == (300, 75)
    assert plan.scann_config(120).num_leaves == 120  # never more leaves than the part has items


def test_an_unreachable_target_is_refused_with_what_was_reached():
    with pytest.raises(TargetRecallUnreachable, match=r"0\.970 at 80 of 100 leaves is below the target 0\.990"):
        choose_leaves(CURVE, 0.99, 100)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_index(tmp_path_factory.mktemp("source"), count=30_000, version="20260101T000000Z")


def build(source, out, *options):
    result = CliRunner().invoke(index_cli, ["build", str(source), "--out", str(out), "--ann", "scann", *options])
    try:
        return result, json.loads((latest_version(out) / METADATA_FILE).read_text())["build"]
    except InvalidIndex:  # no version written
        return result, None


def test_a_tuned_build_searches_the_fewest_leaves_that_reach_the_target(source, tmp_path):
    result, low = build(source, tmp_path / "low", "--target-recall", "0.8")
    assert result.exit_code == 0, result.output
    result, high = build(source, tmp_path / "high", "--target-recall", "0.97")
    assert result.exit_code == 0, result.output
    for built, target in ((low, 0.8), (high, 0.97)):
        curve = {p["leaves_to_search"]: p["recall"] for p in built["tuning"]["curve"]}
        chosen = built["leaves_to_search"]
        assert curve[chosen] >= target
        assert all(recall < target for leaves, recall in curve.items() if leaves < chosen)  # none fewer would do
        assert built["tuning"]["target_recall"] == target and built["tuning"]["samples"] == 400
    assert low["leaves_to_search"] < high["leaves_to_search"] < high["num_leaves"]
    assert f"searching {high['leaves_to_search']} of {high['num_leaves']} leaves" in result.output
    # What serving loads searches that many leaves, and the serving spot-check (other queries) agrees.
    served = searcher_for(load_index(latest_version(tmp_path / "high")))
    assert served.params.leaves_to_search == high["leaves_to_search"]
    assert spot_check_recall(served, load_index(latest_version(tmp_path / "high")).embeddings) >= 0.9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target-recall", "0.9", "--search-fraction", "0.2"], "not both"),
        (["--target-recall", "0.9", "--ann", "exact"], "exact search has recall 1"),
        (["--target-recall", "1.5"], "1.5 is not in the range 0.5<=x<=1.0"),
    ],
)
def test_contradictory_or_bad_tuning_options_are_refused_before_building(source, tmp_path, options, message):
    result, built = build(source, tmp_path / "out", *options)
    assert result.exit_code == 2 and message in result.output, result.output
    assert built is None  # nothing written


def test_a_catalog_searched_exactly_needs_no_tuning(tmp_path):
    small = write_index(tmp_path / "small", count=3000, version="20260101T000000Z")
    result = CliRunner().invoke(
        index_cli, ["build", str(small), "--out", str(tmp_path / "out"), "--target-recall", "0.9"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "3000 items are searched exactly (recall 1; --ann auto builds ScaNN past 20,000): --target-recall not used"
        in (result.output)
    )
    assert json.loads((latest_version(tmp_path / "out") / METADATA_FILE).read_text())["build"] == {"ann": "exact"}


def test_scann_options_that_a_build_searched_exactly_does_not_use_are_said_or_refused(tmp_path):
    """They were accepted without a word, and a user passing --leaves on a small catalog got an exact index."""
    small = write_index(tmp_path / "small", count=300, version="20260101T000000Z")
    refused = CliRunner().invoke(
        index_cli, ["build", str(small), "--out", str(tmp_path / "a"), "--ann", "exact", "--leaves", "5"]
    )
    assert refused.exit_code == 2 and "--leaves tune a ScaNN build; --ann exact has none" in refused.output
    said = CliRunner().invoke(index_cli, ["build", str(small), "--out", str(tmp_path / "b"), "--leaves", "5"])
    assert said.exit_code == 0, said.output
    assert "300 items are searched exactly" in said.output and "--leaves not used" in said.output


def test_an_out_folder_under_a_file_is_one_line_naming_it_not_a_traceback(tmp_path):
    small = write_index(tmp_path / "small", count=300, version="20260101T000000Z")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(index_cli, ["build", str(small), "--out", str(tmp_path / "afile" / "idx")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"runs through {tmp_path / 'afile'}, which is a file" in result.output


def test_a_sharded_publish_that_fails_half_way_leaves_no_part_published_and_nothing_hidden(tmp_path, monkeypatch):
    """Moved one part at a time (the router first), an interrupted publish left part of the version live and the
    rest in a hidden folder nothing cleaned."""
    from services.retrieval import index_cli as cli_module

    source = write_index(tmp_path / "src", count=300, version="20260101T000000Z")
    moves, real = [], os.replace

    def interrupted_at_the_second(src, dst):
        if ".building-" in str(src) and ".building-" not in str(dst):  # a publishing move, not a build's own
            moves.append(dst)
            if len(moves) == 2:
                raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(cli_module.os, "replace", interrupted_at_the_second)
    out = tmp_path / "out"
    result = CliRunner().invoke(index_cli, ["build", str(source), "--out", str(out), "--shards", "2", "--ann", "exact"])
    assert result.exit_code != 0
    assert Path(moves[0]).parent.name == "shard-0"  # shards first: the router, which declares the version, last
    leftovers = [p for p in out.rglob("*") if p.is_dir() and (p.name.startswith(".") or (p / METADATA_FILE).exists())]
    assert leftovers == []


def test_an_unreachable_target_is_refused_and_publishes_nothing(source, tmp_path):
    # One neighbour re-scored exactly: the quantised scores alone cannot reach recall 1 even over every leaf.
    result, built = build(source, tmp_path / "whole", "--target-recall", "1.0", "--pre-reorder", "1")
    assert result.exit_code == 1 and "is below the target 1.000" in result.output, result.output
    assert built is None and not [p for p in (tmp_path / "whole").rglob("*") if p.is_dir()]
    # Sharded: the router and the shards built before the one that failed are not published either.
    result = CliRunner().invoke(
        index_cli,
        ["build", str(source), "--out", str(tmp_path / "sharded"), "--ann", "scann", "--shards", "2"]
        + ["--target-recall", "1.0", "--pre-reorder", "1"],
    )
    assert result.exit_code == 1 and "shard 0: recall@10" in result.output, result.output
    assert [p.name for p in (tmp_path / "sharded").iterdir()] == []


def test_a_sharded_build_is_published_whole_once_every_shard_is_tuned(source, tmp_path):
    out = tmp_path / "sharded"
    result = CliRunner().invoke(
        index_cli,
        ["build", str(source), "--out", str(out), "--ann", "scann", "--shards", "2", "--target-recall", "0.9"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["router", "shard-0", "shard-1"]  # nothing hidden left behind
    versions = {latest_version(out / part).name for part in ("router", "shard-0", "shard-1")}
    assert len(versions) == 1
    for shard in (0, 1):
        built = json.loads((latest_version(out / f"shard-{shard}") / METADATA_FILE).read_text())["build"]
        assert built["tuning"]["curve"][-1]["recall"] >= 0.9 and built["shard"] == shard
        assert f"shard {shard}: searching {built['leaves_to_search']} of" in result.output


def test_a_build_after_the_clock_stepped_back_is_still_the_version_served(source, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(latest_version(source), out / "21000101T000000000000Z")  # named by a clock far ahead
    result = CliRunner().invoke(index_cli, ["build", str(source), "--out", str(out), "--ann", "exact"])
    assert result.exit_code == 0, result.output
    assert latest_version(out).name == "21000101T000000000001Z"


def test_a_build_the_servers_would_refuse_is_refused_and_publishes_nothing(source, tmp_path):
    from services.retrieval.state import open_index

    # One leaf of 300 searched: far below the servers' recall spot-check (AISLE_RETRIEVAL_MIN_SPOT_CHECK_RECALL).
    options = ("--leaves", "300", "--search-fraction", "0.001")
    result, built = build(source, tmp_path / "refused", *options)
    assert result.exit_code == 1, result.output
    assert "spot-check" in result.output and "below --min-recall 0.800" in result.output, result.output
    assert built is None and not [p for p in (tmp_path / "refused").rglob("*") if p.is_dir()]
    # The check is the servers' own: with it lowered the same build is published, and a server refuses it at load.
    result, built = build(source, tmp_path / "published", *options, "--min-recall", "0")
    assert result.exit_code == 0 and built["leaves_to_search"] == 1, result.output
    with pytest.raises(InvalidIndex, match="recall spot-check"):
        open_index(latest_version(tmp_path / "published"), exact_threshold=0, min_recall=0.8)
