"""The ranking service with the embedded ONNX Runtime backend, on a real in-process server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import grpc
import numpy as np
import pytest

from services.core.errors import details_of
from services.ranking.features import encode_history
from tests.integration.ranking.helpers import rank, rank_request, ranking_server, settings_for


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda ids: rank_request(ids[:3], []), "candidate_item_ids"),
        (lambda ids: rank_request(ids[:3], [f"c-{i}" for i in range(100_000)]), "candidate_item_ids"),
        (lambda ids: rank_request([ids[0]] * 501, ids[:5]), "history"),
        (lambda ids: rank_request(ids[:3], [ids[0], ""]), "candidate_item_ids[1]"),
        (lambda ids: _with(rank_request(ids[:3], ids[:5]), lambda r: setattr(r, "surface", 99)), "surface"),
        (
            lambda ids: _with(rank_request(ids[:3], ids[:5]), lambda r: setattr(r.context, "device", 77)),
            "context.device",
        ),
        # The one-pass check of a plain history (the common case) must see an undefined event type too.
        (
            lambda ids: _with(rank_request(ids[:3], ids[:5]), lambda r: setattr(r.history[1], "event_type", 99)),
            "history[1].event_type",
        ),
    ],
    ids=["no-candidates", "100k-candidates", "history-over-the-limit", "empty-id", "surface", "device", "event-type"],
)
async def test_invalid_requests_are_invalid_argument(feature_model, build, field):
    async with ranking_server(settings_for(feature_model.repository)) as (host, _):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await rank(host.port, build(feature_model.item_ids), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details_of(failure.value)
    assert info.reason == "INVALID_ARGUMENT" and field in violations, violations


def _with(request, change):
    change(request)
    return request


async def test_the_provider_comes_from_the_session_and_is_logged(trained, caplog):
    caplog.set_level(logging.INFO, logger="services.ranking.backends.onnxruntime")
    async with ranking_server(settings_for(trained.model_repository)) as (_, backend):
        assert backend.providers == ["CPUExecutionProvider"]
    assert any("with CPUExecutionProvider (onnxruntime)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("options", "limit"),
    [
        ({}, 1000),
        ({"inline_max_candidates": 0}, 0),
        ({"inference_instances": 2}, 0),
        ({"max_queue_delay_us": 500}, 0),
        ({"batching": False, "inline_max_candidates": 4}, 4),
    ],
    ids=["cpu-default", "turned-off", "two-instances", "queue-delay", "unbatched"],
)
async def test_small_lone_cpu_requests_run_on_the_event_loop_unless_told_otherwise(trained, options, limit):
    async with ranking_server(settings_for(trained.model_repository, **options)) as (host, backend):
        assert backend.inline_max_candidates == limit
        # Answers are the same whichever thread computes them: 5 candidates (inline where the limit allows) and 8.
        small = await rank(host.port, rank_request(trained.item_ids[:3], trained.item_ids[3:8]))
        wide = await rank(host.port, rank_request(trained.item_ids[:3], trained.item_ids[3:11]))
    assert [s.purchase_probability for s in small.scored_items] == pytest.approx(
        [s.purchase_probability for s in wide.scored_items[:5]], abs=1e-6
    )


async def test_a_gpu_session_never_runs_inline(trained):
    async with ranking_server(settings_for(trained.model_repository)) as (_, backend):
        assert backend.inline_max_candidates == 1000
        # The same version as if ONNX Runtime had given it the CUDA provider (what _install reads).
        backend._install(replace(backend._loaded, providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
        assert backend.inline_max_candidates == 0 and backend._batcher.inline_max_width == 0


async def test_feature_model_scores_are_torchs_on_the_joined_features(feature_model):
    ids = feature_model.item_ids
    history = [ids[3], ids[7], ids[3], ids[12]]
    out_of_stock = next(i for i, row in enumerate(feature_model.snapshot.values[1:]) if row[4] == 0)
    candidates = [ids[3], "NOT-IN-CATALOG", ids[out_of_stock], ids[40], ids[7]]
    async with ranking_server(settings_for(feature_model.repository)) as (host, _):
        reply = await rank(host.port, rank_request(history, candidates))
        columnar_request = rank_request(history, candidates)
        columnar_request.columnar = True
        columnar = await rank(host.port, columnar_request)
    tokens = np.array([[4, 0, out_of_stock + 1, 41, 8]])
    purchase, returns = feature_model.reference(encode_history(np.array([4, 8, 4, 13]), 50)[None, :], tokens)
    got = [s.purchase_probability for s in reply.scored_items]
    assert [s.item_id for s in reply.scored_items] == candidates
    assert reply.model_version.name == "ranker" and reply.model_version.version == "1"
    assert got[1] == 0.0 and not reply.scored_items[1].HasField("return_probability")
    known = [0, 2, 3, 4]
    assert np.allclose([got[i] for i in known], purchase[0, known], atol=1e-5)
    assert np.allclose([reply.scored_items[i].return_probability for i in known], returns[0, known], atol=1e-5)
    # The columnar answer: the same probabilities in candidate order, NaN for the unknown item's P(return).
    assert not columnar.scored_items
    assert list(columnar.columns.purchase_probabilities) == got
    column = np.array(columnar.columns.return_probabilities)
    assert len(column) == len(candidates) and np.isnan(column[1]) and not np.isnan(column[known]).any()
    assert np.allclose(column[known], [reply.scored_items[i].return_probability for i in known])


async def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(feature_model):
    ids = feature_model.item_ids
    rng = np.random.default_rng(3)
    requests = []
    for _ in range(24):
        history = list(rng.choice(ids, size=rng.integers(0, 12)))
        candidates = list(rng.choice(ids, size=rng.integers(1, 40)))
        requests.append(rank_request(history, candidates))
    settings = settings_for(feature_model.repository, max_queue_delay_us=20_000)
    async with ranking_server(settings) as (host, backend):
        alone = [await rank(host.port, request) for request in requests]
        together = await asyncio.gather(*(rank(host.port, request) for request in requests))
        sizes = backend._batcher.batch_sizes
    assert max(sizes) > 1
    for single, batched in zip(alone, together, strict=True):
        assert [s.item_id for s in single.scored_items] == [s.item_id for s in batched.scored_items]
        assert np.allclose(
            [s.purchase_probability for s in single.scored_items],
            [s.purchase_probability for s in batched.scored_items],
            atol=1e-6,
        )
