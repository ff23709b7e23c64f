"""The shard router's parts without servers: its query data's swaps, anchors for unknown items, validation first."""

from __future__ import annotations

import json

import grpc
import pytest
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.core.errors import DependencyUnavailable, InvalidArgument, NotReady, Relayed, status_for
from services.core.metrics import ArtifactMetrics
from services.retrieval.index import METADATA_FILE, InvalidIndex, save_index_like
from services.retrieval.regions import UnlistedRegions
from services.retrieval.router import QueryDataHolder, QueryResolver, ShardRouter
from services.retrieval.settings import RetrievalSettings
from services.retrieval.state import IndexWatcher
from tests.support.retrieval import write_index

TWO_TOWER = common.CANDIDATE_SOURCE_TWO_TOWER


def router_version(root, version, shards=2, **write):
    """A router/ version built for ``shards`` shards, as `aisle index build --shards` writes one."""
    from services.retrieval.index import load_index

    whole = load_index(write_index(root.parent / f"whole-{version}", version=version, **write))
    return save_index_like(whole, root, version=version, sharding={"shards": shards})


async def test_new_query_data_is_swapped_in_and_bad_versions_are_refused(tmp_path):
    root = tmp_path / "router"
    first = router_version(root, "20260101T000000Z", count=300)
    registry = CollectorRegistry()
    # As build_application wires it: the router's refusals and version in the service's metrics.
    holder = ShardRouter(
        RetrievalSettings(index_path=root, shard_targets="a:1,b:2", index_poll_s=0, metrics_port=None),
        metrics=ArtifactMetrics(registry, "retrieval"),
    ).queries
    await holder.load_latest(root)
    watcher = IndexWatcher(holder, root, interval_s=0)
    # Corrupt, then built for another shard count: each refused, the previous data keeps serving.
    corrupt = router_version(root, "20260102T000000Z", count=300)
    metadata = json.loads((corrupt / METADATA_FILE).read_text())
    metadata["checksums"]["item_ids.txt"] = "0" * 64
    (corrupt / METADATA_FILE).write_text(json.dumps(metadata))
    assert not await watcher.check_once() and holder.current.artifact.path == first
    three = router_version(root, "20260103T000000Z", shards=3, count=300)
    assert not await watcher.check_once() and holder.current.artifact.path == first
    assert "built for 3 shards but 2 shard targets" in holder.refused.reason(three)
    labels = {"service": "retrieval", "kind": "router_query_data"}
    assert registry.get_sample_value("aisle_artifact_refused_total", labels) == 2
    newer = router_version(root, "20260104T000000Z", count=320)
    assert await watcher.check_once() and holder.current.artifact.path == newer
    assert "I00310" in holder.current.rows
    assert registry.get_sample_value("aisle_artifact_serving", {**labels, "version": "20260104T000000Z"}) == 1


async def test_query_data_for_another_shard_count_is_refused_at_start(tmp_path):
    router_version(tmp_path / "router", "20260101T000000Z", count=300)
    with pytest.raises(InvalidIndex, match="built for 2 shards but 1 shard targets"):
        await QueryDataHolder(shards=1).load_latest(tmp_path / "router")


def test_a_candidate_the_router_does_not_hold_keeps_its_shards_anchor(tmp_path):
    resolver = QueryResolver(write_index(tmp_path, count=300))
    request = pb.RetrieveRequest(consent=True, history=[common.Interaction(item_id=i) for i in ("I00005", "I00050")])
    response = pb.RetrieveResponse(
        candidates=[
            pb.Candidate(item_id="I00007", source=TWO_TOWER, score=0.9),
            pb.Candidate(item_id="I09999", source=TWO_TOWER, score=0.8, anchor_item_id="I00050"),  # newer shard's
            pb.Candidate(item_id="I00051", source=TWO_TOWER, score=0.7),
            pb.Candidate(item_id="I08888", source=common.CANDIDATE_SOURCE_POPULARITY, score=3.0),
        ]
    )
    assert resolver.name_history_anchors(request, response) == 1
    anchors = [c.anchor_item_id for c in response.candidates]
    assert anchors[1] == "I00050" and anchors[3] == ""
    assert anchors[0] in {"I00005", "I00050"} and anchors[2] in {"I00005", "I00050"}


class _NoShard:
    def __getattr__(self, name):
        raise AssertionError("an invalid request reached a shard")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.anchor_item_ids.extend(f"I{i % 300:05d}" for i in range(20_000)), "anchor_item_ids"),
        (lambda r: r.history.extend([common.Interaction(item_id="I00001")] * 330_000), "history"),
        (lambda r: r.anchor_vectors.add(item_id="I00001", vector=[float("nan")] * 16), "anchor_vectors[0].vector"),
    ],
)
async def test_the_router_validates_before_it_resolves(tmp_path, monkeypatch, mutate, field):
    root = tmp_path / "router"
    router_version(root, "20260101T000000Z", count=300)
    settings = RetrievalSettings(index_path=root, shard_targets="a:1,b:2", index_poll_s=0, metrics_port=None)
    router = ShardRouter(settings)
    await router.queries.load_latest(root)
    router.stubs = [_NoShard(), _NoShard()]
    resolved = []
    monkeypatch.setattr(QueryResolver, "resolve", lambda self, request: resolved.append(request))
    message = pb.RetrieveRequest(k=10, consent=True)
    mutate(message)
    with pytest.raises(InvalidArgument) as failure:
        await router.Retrieve(message, context=None)
    assert field in failure.value.violations and not resolved


class _TimedShard:
    """A shard stub that records the deadline each call was given and answers at once."""

    def __init__(self, timeouts: list[tuple[str, float]]):
        self.timeouts = timeouts

    async def UpdateAvailability(self, request, timeout):  # noqa: N802
        self.timeouts.append(("UpdateAvailability", timeout))
        return pb.UpdateAvailabilityResponse(applied_count=len(request.updates))


class _Context:
    def __init__(self, remaining: float | None):
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(("remaining", "expected"), [(None, 2.0), (30.0, 2.0), (0.5, 0.5)])
async def test_stock_updates_reach_the_shards_with_the_update_deadline_not_the_request_paths(remaining, expected):
    # 50 ms suits a Retrieve on the request path; a batch of stock updates gets its own, longer deadline.
    settings = RetrievalSettings(
        index_path="unused", shard_targets="a:1,b:2", shard_timeout_ms=50, shard_update_timeout_ms=2000
    )
    router, timeouts = ShardRouter(settings), []
    router.stubs = [_TimedShard(timeouts), _TimedShard(timeouts)]
    update = pb.AvailabilityUpdate(item_id="I00001", stock=0)
    reply = await router.UpdateAvailability(pb.UpdateAvailabilityRequest(updates=[update]), _Context(remaining))
    assert reply.applied_count == 2  # each shard answered (only one holds the item; the fake counts all)
    assert timeouts == [("UpdateAvailability", expected)] * 2


async def test_a_router_not_connected_to_its_shards_yet_refuses_stock_updates_instead_of_applying_none():
    """Its server listens before it connects: answering "0 applied", OK, the push tool would report success."""
    router = ShardRouter(RetrievalSettings(index_path="unused", shard_targets="a:1,b:2"))
    update = pb.UpdateAvailabilityRequest(updates=[pb.AvailabilityUpdate(item_id="I00001", stock=0)])
    with pytest.raises(NotReady, match="not connected to its shards yet"):
        await router.UpdateAvailability(update, _Context(None))


class _RefusingShard:
    async def UpdateAvailability(self, request, timeout):  # noqa: N802
        status = status_for(InvalidArgument({"updates[0].item_id": "empty"}))
        raise grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata))


async def test_a_shards_refusal_of_a_stock_update_is_relayed_as_it_came():
    settings = RetrievalSettings(index_path="unused", shard_targets="a:1,b:2")
    router = ShardRouter(settings)
    router.stubs = [_TimedShard([]), _RefusingShard()]
    with pytest.raises(Relayed) as relayed:
        await router.UpdateAvailability(pb.UpdateAvailabilityRequest(updates=[pb.AvailabilityUpdate()]), _Context(None))
    status = status_for(relayed.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(key == "grpc-status-details-bin" for key, _ in status.trailing_metadata)


class _DownShard:
    async def UpdateAvailability(self, request, timeout):  # noqa: N802
        details = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.7:50061"
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def test_a_shard_that_fails_a_stock_update_is_not_relayed_with_its_message():
    # Only a refusal is the caller's to read; a failure's message may name hosts: it goes to the error
    # interceptor, which answers with the code alone ("downstream call failed: UNAVAILABLE").
    router = ShardRouter(RetrievalSettings(index_path="unused", shard_targets="a:1,b:2"))
    router.stubs = [_TimedShard([]), _DownShard()]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await router.UpdateAvailability(pb.UpdateAvailabilityRequest(updates=[pb.AvailabilityUpdate()]), _Context(None))
    assert not isinstance(failed.value, Relayed) and failed.value.code() == grpc.StatusCode.UNAVAILABLE


class _RetrieveShard:
    """A shard stub whose Retrieve answers with one candidate of index ``version``, or refuses ``refused`` fields."""

    def __init__(self, version: str = "20260101T000000Z", refused: dict[str, str] | None = None):
        self.version, self.refused = version, refused

    async def Retrieve(self, request, timeout):  # noqa: N802
        if self.refused:
            status = status_for(InvalidArgument(self.refused))
            raise grpc.aio.AioRpcError(
                status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
            )
        return pb.RetrieveResponse(
            candidates=[pb.Candidate(item_id="I00007", source=common.CANDIDATE_SOURCE_POPULARITY, score=1.0)],
            index_version=common.ArtifactVersion(kind="index", name="items", version=self.version),
        )


async def _router_with(tmp_path, shards) -> ShardRouter:
    root = tmp_path / "router"
    router_version(root, "20260101T000000Z", count=300)
    router = ShardRouter(RetrievalSettings(index_path=root, shard_targets="a:1,b:2", index_poll_s=0))
    await router.queries.load_latest(root)
    router.stubs = shards
    return router


async def test_the_router_counts_the_calls_for_a_region_its_index_does_not_list(tmp_path):
    root = tmp_path / "router"
    router_version(root, "20260101T000000Z", count=300)
    registry = CollectorRegistry()
    router = ShardRouter(
        RetrievalSettings(index_path=root, shard_targets="a:1,b:2", index_poll_s=0),
        unlisted_regions=UnlistedRegions(registry, "retrieval-router"),
    )
    await router.queries.load_latest(root)
    router.stubs = [_RetrieveShard(), _RetrieveShard()]
    for region in ("NL", "GB", "", "NL"):  # GB is listed; no region is any region
        request = pb.RetrieveRequest(k=10)
        request.context.region = region
        answer = await router.Retrieve(request, _Context(None))
        assert answer.candidates and not answer.degradations
    assert registry.get_sample_value("aisle_retrieval_unlisted_region_total", {"service": "retrieval-router"}) == 2


async def test_a_shard_that_refuses_what_the_router_accepted_is_dropped_not_the_callers_error(tmp_path):
    # Mid-rollout, shard b runs with a lower limit than the router (and shard a) accept.
    refusing = _RetrieveShard(refused={"anchor_item_ids": "at most 5 ids, got 8"})
    router = await _router_with(tmp_path, [_RetrieveShard(), refusing])
    answer = await router.Retrieve(pb.RetrieveRequest(k=10), _Context(None))
    assert [c.item_id for c in answer.candidates] == ["I00007"]
    dropped = [d for d in answer.degradations if d.reason == common.DEGRADATION_REASON_SOURCE_DROPPED]
    assert [(d.stage, d.detail) for d in dropped] == [("shard b:2", "INVALID_ARGUMENT")]


async def test_a_refusal_of_the_callers_fields_by_every_shard_is_relayed_with_the_field_named(tmp_path):
    refused = {"anchor_item_ids": "at most 5 ids, got 8"}
    router = await _router_with(tmp_path, [_RetrieveShard(refused=refused), _RetrieveShard(refused=refused)])
    with pytest.raises(Relayed) as relayed:
        await router.Retrieve(pb.RetrieveRequest(k=10), _Context(None))
    status = status_for(relayed.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "anchor_item_ids" in status.details and "at most 5 ids" in status.details


async def test_a_refusal_of_the_routers_own_vectors_never_reaches_the_caller_as_its_error(tmp_path):
    # Shards on an index of another dimension refuse the vectors the router encoded: an outage of retrieval (the
    # gateway falls back), not an INVALID_ARGUMENT that tells the caller to change a request it cannot change.
    refused = {"history_query_vector": "must hold 32 values, got 16"}
    router = await _router_with(tmp_path, [_RetrieveShard(refused=refused), _RetrieveShard(refused=refused)])
    with pytest.raises(DependencyUnavailable, match="no index shard answered: a:1 INVALID_ARGUMENT"):
        await router.Retrieve(pb.RetrieveRequest(k=10), _Context(None))
