"""The end-to-end benchmark's measurement and summary (open loop, which offered rates count as held, overhead per
hop) and its workdir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import e2e
from bench.e2e import cpu_ratio, held_rates, mean_between, open_loop, prepare_artifacts, saturated, summarise


def row(
    rate: float,
    p99_ms: float = 10.0,
    achieved: float | None = None,
    error_rate: float = 0.0,
    degraded_rate: float = 0.0,
    p50_ms: float = 5.0,
) -> dict:
    achieved = rate if achieved is None else achieved
    return {
        "offered_rps": rate,
        "achieved_rps": achieved,
        "p99_ms": p99_ms,
        "p50_ms": p50_ms,
        "error_rate": error_rate,
        "degraded_rate": degraded_rate,
        "cpu_ms_per_request": {"process": 1.0},
    }


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


def test_degraded_answers_past_one_percent_saturate_a_rate_as_errors_do():
    assert not saturated(row(300, degraded_rate=0.01))
    assert saturated(row(300, degraded_rate=0.011))  # on time, but a fallback or unranked answer
    assert held_rates([row(100), row(200, degraded_rate=0.05), row(300)]) == [100]


def test_overhead_per_hop_is_the_median_over_the_rates_both_chains_held_with_each_rates_and_the_low_load_one():
    aisle = [row(50, p50_ms=8.0), row(100, p50_ms=8.0), row(200, p50_ms=11.0), row(300, p50_ms=20.0)]
    echo = [row(50, p50_ms=2.0), row(100, p50_ms=2.0), row(200, p50_ms=2.0), row(300, p50_ms=2.0)]
    summary = summarise(aisle, echo)
    assert summary["overhead_per_hop_ms_by_rate"] == {"50": 2.0, "100": 2.0, "200": 3.0, "300": 6.0}
    assert summary["overhead_per_hop_ms"] == 2.5  # median of 2, 2, 3, 6: (Aisle p50 - echo p50) / 3 hops
    assert summary["overhead_per_hop_ms_at_low_load"] == 2.0  # rates up to half the highest held (150/s)
    assert summary["saturation_rps"] == 300 and summary["p99_ms_at_200rps"] == 10.0
    # A rate the echo chain saturated is left out; nothing held: no figures.
    echo[1] = row(100, p99_ms=500.0)
    assert "100" not in summarise(aisle, echo)["overhead_per_hop_ms_by_rate"]
    failed = summarise([row(50, error_rate=0.5)], echo)
    assert failed["saturation_rps"] == 0.0 and failed["overhead_per_hop_ms"] is None


def test_a_rates_mean_is_the_difference_of_two_readings_of_a_cumulative_histogram():
    assert mean_between((1000.0, 2.0), (1000.0 + 3 * 450.0, 5.0)) == 450.0  # not (1000 + 1350) / 5
    assert mean_between((10.0, 1.0), (10.0, 1.0)) is None


async def test_the_open_loop_sends_on_schedule_whatever_is_in_flight_and_counts_lateness_and_failures():
    import asyncio

    import grpc

    in_flight, most = 0, 0

    async def send(request):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.2)  # slower than the gap between sends: a closed loop would wait
            if request == "fail":
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None)
            return request
        finally:
            in_flight -= 1

    requests = ["ok"] * 19 + ["fail"]
    measured = await open_loop(send, requests, rate=100.0)
    assert most >= 15  # 100/s for 0.2 s each: about 20 in flight at once
    assert measured["requests"] == 20 and measured["errors"] == 1 and measured["error_rate"] == 0.05
    assert measured["p50_ms"] >= 200  # latency from each scheduled time, failures included
    # 19 answers from the first scheduled send to the last answer (0.19 s of sends + 0.2 s): about 49/s, not 100
    # (the lower bound leaves room for a stall of a busy machine).
    assert 20 < measured["achieved_rps"] < 55
    assert 0 <= measured["send_late_p99_ms"] < 200 and measured["send_late_max_ms"] >= measured["send_late_p99_ms"]
