"""The end-to-end benchmark's summary (which offered rates count as held) and its workdir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import e2e
from bench.e2e import cpu_ratio, held_rates, prepare_artifacts


def row(rate: float, p99_ms: float = 10.0, achieved: float | None = None, error_rate: float = 0.0) -> dict:
    achieved = rate if achieved is None else achieved
    return {"offered_rps": rate, "achieved_rps": achieved, "p99_ms": p99_ms, "error_rate": error_rate}


def test_rates_count_as_held_up_to_the_first_saturated_one():
    rows = [row(300), row(100), row(200, p99_ms=150.0), row(150)]  # any order; 200/s saturated
    assert held_rates(rows) == [100, 150]


def test_a_rate_held_after_a_failed_lower_one_does_not_count():
    rows = [row(100), row(200, achieved=150), row(250, error_rate=0.02), row(300)]
    assert held_rates(rows) == [100]
    assert held_rates([row(50, p99_ms=101.0), row(100)]) == []


def test_the_cpu_ratio_is_the_median_over_the_given_rates_of_every_process_against_the_echo_chain():
    def cpu(rate: float, **processes: float) -> dict:
        return {**row(rate), "cpu_ms_per_request": processes}

    aisle = [cpu(100, gateway=3.0, retrieval=2.0, load=1.0), cpu(200, gateway=4.0, load=1.0), cpu(300, gateway=9.0)]
    echo = [cpu(100, front=1.0, back=1.0, load=1.0), cpu(200, front=2.0, load=0.5), cpu(300, front=1.0)]
    assert cpu_ratio(aisle, echo, [100, 200]) == 2.0  # 6/3 and 5/2.5; 300/s not asked for
    assert cpu_ratio(aisle, echo, [100, 200, 300]) == 2.0  # median of 2, 2, 9
    assert cpu_ratio(aisle, echo[:1], [100, 200]) == 2.0  # a rate the echo chain lacks is left out
    assert cpu_ratio(aisle, echo, []) is None
    idle = [cpu(100, front=0.0, load=0.0)]  # a run too short for /proc's 10 ms ticks
    assert cpu_ratio(aisle, idle, [100]) is None


def test_a_workdir_with_another_shops_artefacts_or_other_files_is_refused_with_the_fix(tmp_path):
    (tmp_path / "artifacts.json").write_text(json.dumps({"items": 100_000, "complete": True}))
    with pytest.raises(SystemExit, match="--items 100000, another --workdir"):
        prepare_artifacts(tmp_path, 1_000_000)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"not the benchmark's \(notes.txt\)"):
        prepare_artifacts(other, 1_000)
    assert (other / "notes.txt").read_text() == "mine"


def test_an_interrupted_preparation_is_cleared_and_made_again(tmp_path, monkeypatch):
    (tmp_path / "artifacts.json").write_text(json.dumps({"items": 1_000, "complete": False}))
    (tmp_path / "model_repository" / "ranker").mkdir(parents=True)  # what the interrupted training left
    (tmp_path / "logs").mkdir()
    made = []

    def train(workdir, items):  # stands in for the training (minutes): the state it starts from is the point
        made.append((sorted(p.name for p in workdir.iterdir()), items))
        raise KeyboardInterrupt

    monkeypatch.setattr(e2e, "train_artifacts", train)
    with pytest.raises(KeyboardInterrupt):
        prepare_artifacts(tmp_path, 1_000)
    assert made == [(["artifacts.json", "logs"], 1_000)]
    assert json.loads((tmp_path / "artifacts.json").read_text()) == {"items": 1_000, "complete": False}


def test_an_index_built_otherwise_is_built_again_and_the_rest_reused(tmp_path, monkeypatch):
    (tmp_path / "artifacts.json").write_text(json.dumps({"items": 1_000, "complete": True}))  # before INDEX_BUILD
    (tmp_path / "ann_index" / "20260101T000000Z").mkdir(parents=True)
    (tmp_path / "catalog.json").write_text("{}")
    built = []
    monkeypatch.setattr(e2e, "train_artifacts", lambda *_: pytest.fail("the trained artefacts are reused"))
    monkeypatch.setattr(e2e, "build_ann_index", lambda workdir: built.append(sorted(p.name for p in workdir.iterdir())))
    prepare_artifacts(tmp_path, 1_000)
    assert built == [["artifacts.json", "catalog.json"]]  # the old index gone first
    assert json.loads((tmp_path / "artifacts.json").read_text())["index_build"] == list(e2e.INDEX_BUILD)
    prepare_artifacts(tmp_path, 1_000)  # now as the benchmark builds it: reused as is
    assert len(built) == 1


@pytest.mark.parametrize("script", ["bench/e2e.py", "bench/handlers.py"])
def test_a_catalog_too_small_for_the_synthetic_shop_is_refused_with_the_minimum(script):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, script, "--items", "5"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--items must be at least 20" in done.stderr


def test_the_sampler_samples_every_span_unless_a_ratio_is_asked_for():
    assert e2e.sampler_env(1.0) == {"OTEL_TRACES_SAMPLER": "always_on"}
    assert e2e.sampler_env(0.05) == {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.05",
    }
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "bench/e2e.py", "--trace-ratio", "0"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--no-tracing turns tracing off" in done.stderr
