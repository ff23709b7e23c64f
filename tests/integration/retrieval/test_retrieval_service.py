"""The retrieval service on real in-process gRPC servers: validation, filters, availability, hot swap, shards."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.errors import details_of
from services.core.server import ServiceHost
from services.retrieval.app import build_application
from services.retrieval.index import METADATA_FILE, InvalidIndex, latest_version, load_index, save_index_like
from services.retrieval.index_cli import index as index_cli
from services.retrieval.settings import RetrievalSettings
from tests.integration.conftest import serving
from tests.support.retrieval import REGIONS, write_index

TWO_TOWER, POPULAR, I2I = (
    common.CANDIDATE_SOURCE_TWO_TOWER,
    common.CANDIDATE_SOURCE_POPULARITY,
    common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
)
CO_VISITATION, BUY_AGAIN = common.CANDIDATE_SOURCE_CO_VISITATION, common.CANDIDATE_SOURCE_BUY_AGAIN


def settings_for(path, **extra) -> RetrievalSettings:
    values = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "index_path": path, "index_poll_s": 0, **extra}
    if "shard_targets" in extra:
        # Not production's 50 ms: the shards run in this process, whose stalls (a full garbage collection of the
        # test run's heap) could drop a shard that answered. A stopped shard is still refused at once.
        values.setdefault("shard_timeout_ms", 2_000)
    return RetrievalSettings(**values)


@contextlib.asynccontextmanager
async def retrieval(path, **extra):
    settings = settings_for(path, **extra)
    async with serving(ServiceHost(settings, build_application(settings))) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            yield host, pb_grpc.RetrievalServiceStub(channel)


@contextlib.asynccontextmanager
async def whole_and_sharded(whole, sharded):
    """Stubs of one server on the whole index and of a router over two shard servers (``sharded`` holds the
    ``aisle index build --shards 2`` output)."""
    async with (
        retrieval(whole) as (_, single),
        retrieval(sharded / "shard-0") as (shard0, _),
        retrieval(sharded / "shard-1") as (shard1, _),
    ):
        targets = f"127.0.0.1:{shard0.port},127.0.0.1:{shard1.port}"
        async with retrieval(sharded / "router", shard_targets=targets) as (_, router):
            yield single, router


async def same_answers(single, router, messages) -> list[tuple[pb.RetrieveResponse, pb.RetrieveResponse]]:
    """(whole, router) answers per message, checked equal and undegraded, in messages and in columns alike."""
    answers = []
    for message in messages:
        want = await single.Retrieve(message, timeout=5)
        got = await router.Retrieve(message, timeout=5)
        assert candidate_keys(got) == candidate_keys(want)
        assert not got.degradations
        columnar = pb.RetrieveRequest()
        columnar.CopyFrom(message)
        columnar.columnar = True
        for stub in (single, router):
            as_columns = await stub.Retrieve(columnar, timeout=5)
            assert not as_columns.candidates and candidate_keys(as_columns) == candidate_keys(want)
        answers.append((want, got))
    return answers


def request(k=20, sources=(TWO_TOWER, POPULAR), history=("I00010", "I00020"), **fields) -> pb.RetrieveRequest:
    message = pb.RetrieveRequest(
        k=k,
        sources=list(sources),
        consent=True,
        history=[common.Interaction(item_id=i, event_type=common.EVENT_TYPE_VIEW) for i in history],
    )
    for name, value in fields.items():
        if name == "region":
            message.context.region = value
        else:
            setattr(message, name, value)
    return message


def candidate_keys(response: pb.RetrieveResponse) -> list[tuple]:
    """(item, source, rank, score, anchor) per candidate, from the messages or, in a columnar answer, the columns."""
    if response.candidates:
        return [(c.item_id, c.source, c.source_rank, round(c.score, 4), c.anchor_item_id) for c in response.candidates]
    c = response.columns
    assert len(c.item_ids) == len(c.sources) == len(c.source_ranks) == len(c.scores) == len(c.anchor_item_ids)
    return [
        (item, source, rank, round(score, 4), anchor)
        for item, source, rank, score, anchor in zip(
            c.item_ids, c.sources, c.source_ranks, c.scores, c.anchor_item_ids, strict=True
        )
    ]


@pytest.fixture(scope="module")
def index_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    write_index(root, version="20260101T000000Z", covisitation=True)
    return root


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "k", 0), "k"),
        (lambda r: setattr(r, "k", -5), "k"),
        (lambda r: setattr(r, "k", 2001), "k"),
        (lambda r: setattr(r, "surface", 99), "surface"),
        (lambda r: setattr(r.context, "device", 77), "context.device"),
        (lambda r: setattr(r.history[0], "event_type", 99), "history[0].event_type"),
        (lambda r: r.history.extend([common.Interaction(item_id="I00001")] * 201), "history"),
        (lambda r: r.sources.append(common.CANDIDATE_SOURCE_FALLBACK_CACHE), "sources[2]"),
        (lambda r: r.anchor_item_ids.append("x" * 300), "anchor_item_ids[0]"),
        (lambda r: r.source_limits.add(source=I2I, k=5), "source_limits[0].source"),
        (lambda r: r.source_limits.add(source=POPULAR, k=0), "source_limits[0].k"),
        (lambda r: r.source_limits.add(source=POPULAR, k=2001), "source_limits[0].k"),
        # Two counts for one source: which one was meant is not for the server to guess.
        (
            lambda r: (r.source_limits.add(source=POPULAR, k=3), r.source_limits.add(source=POPULAR, k=7)),
            "source_limits[1].source",
        ),
        # k may be left out only when every source has its own count.
        (lambda r: (r.source_limits.add(source=POPULAR, k=5), setattr(r, "k", 0)), "k"),
    ],
)
async def test_invalid_requests_name_the_field(index_root, mutate, field):
    message = request()
    mutate(message)
    async with retrieval(index_root) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Retrieve(message, timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details_of(failure.value)[1]


async def test_filters_region_stock_brands_categories_and_purchases(index_root):
    async with retrieval(index_root) as (host, stub):
        holder_index = host.app  # noqa: F841 (the host keeps the app alive)
        message = request(k=200, sources=(TWO_TOWER, POPULAR, I2I), region="FR")
        message.anchor_item_ids.append("I00030")
        message.exclusions.brands.append("b3")
        message.exclusions.categories.append("c1")
        message.exclude_purchased = True
        message.history.add(item_id="I00001", event_type=common.EVENT_TYPE_PURCHASE)
        reply = await stub.Retrieve(message, timeout=5)
    artifact_dir = latest_version(index_root)
    from services.retrieval.index import load_index

    artifact = load_index(artifact_dir)
    rows = {item: row for row, item in enumerate(artifact.item_ids)}
    assert {c.source for c in reply.candidates} == {TWO_TOWER, POPULAR, I2I}
    for candidate in reply.candidates:
        row = rows[candidate.item_id]
        assert artifact.sold_in[row, artifact.region_column("FR")], candidate.item_id
        assert artifact.stock[row] > 0
        assert artifact.brands[row] != "b3" and artifact.categories[row] != "c1"
        assert candidate.item_id not in {"I00001", "I00030"}
    assert sum(c.source == POPULAR for c in reply.candidates) == 200


@pytest.mark.parametrize(
    ("changes", "region", "said"),
    [
        ({}, "FR", "FR"),
        ({}, "", ""),
        # Regions and what is sold in each, but no sales by region: every region's list is the shop's.
        ({"region_popularity": None, "popularity_regions": None}, "FR", ""),
        # Sales by region, but too few of FR's own to call its list FR's (as `aisle train` says of a small region).
        ({"popularity_regions": ["GB", "DE"]}, "FR", ""),
        ({"popularity_regions": ["GB", "DE"]}, "DE", "DE"),
        # No regional data at all: any region is served the shop's list.
        ({"regions": [], "sold_in": None, "region_popularity": None, "popularity_regions": None}, "GB", ""),
        # A region the index does not list is served the shop's list.
        ({}, "NL", ""),
    ],
)
async def test_the_answer_names_the_region_whose_sales_ranked_its_popular_items(
    index_root, tmp_path, changes, region, said
):
    """The gateway explains a popular item as "Popular in <region>" only when that region's sales ranked it."""

    root = index_root
    if changes:
        root = tmp_path / "index"
        save_index_like(load_index(latest_version(index_root)), root, version="20260102T000000Z", **changes)
    async with retrieval(root) as (_, stub):
        reply = await stub.Retrieve(request(k=5, sources=(POPULAR,), history=(), region=region), timeout=5)
    assert len(reply.candidates) == 5
    assert reply.popularity_region == said
    # A version built from this one keeps what it says of its popularity.
    wanted = changes.get("popularity_regions", REGIONS if "region_popularity" not in changes else None) or []
    assert load_index(latest_version(root)).popularity_regions == frozenset(wanted)


async def test_a_region_the_index_does_not_list_is_served_what_is_sold_everywhere(index_root, tmp_path):
    """A region new since the index's data (or misspelt) is served, not refused: the items sold everywhere, the
    shop's popular list, counted; an item later restricted to listed regions is not sold there any more."""
    artifact = load_index(latest_version(index_root))
    everywhere = {item for item, anywhere in zip(artifact.item_ids, artifact.sold_everywhere, strict=True) if anywhere}
    assert 0 < len(everywhere) < len(artifact)  # the fixture restricts some items to some regions
    settings = settings_for(index_root)
    registry = CollectorRegistry()
    async with serving(ServiceHost(settings, build_application(settings, registry), registry=registry)) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            reply = await stub.Retrieve(request(k=300, sources=(TWO_TOWER, POPULAR), region="NL"), timeout=5)
            shop = await stub.Retrieve(request(k=2000, sources=(POPULAR,), history=()), timeout=5)
            got = {c.item_id for c in reply.candidates}
            assert len(reply.candidates) == 600 and got <= everywhere
            assert reply.popularity_region == ""
            # The shop's popular order, among what is sold everywhere.
            popular = [c.item_id for c in reply.candidates if c.source == POPULAR]
            assert popular == [c.item_id for c in shop.candidates if c.item_id in everywhere][: len(popular)]
            top = popular[0]
            await stub.UpdateAvailability(
                pb.UpdateAvailabilityRequest(
                    updates=[pb.AvailabilityUpdate(item_id=top, stock=5, set_regions=True, sold_in_regions=["GB"])]
                ),
                timeout=5,
            )
            after = await stub.Retrieve(request(k=5, sources=(POPULAR,), history=(), region="NL"), timeout=5)
            in_gb = await stub.Retrieve(request(k=300, sources=(POPULAR,), history=(), region="GB"), timeout=5)
    assert top not in {c.item_id for c in after.candidates}
    assert top in {c.item_id for c in in_gb.candidates}
    assert registry.get_sample_value("aisle_retrieval_unlisted_region_total", {"service": "retrieval"}) == 2


async def test_per_source_counts_in_one_call(index_root):
    message = request(k=0, sources=(TWO_TOWER, POPULAR))
    message.source_limits.add(source=TWO_TOWER, k=7)
    message.source_limits.add(source=POPULAR, k=3)
    async with retrieval(index_root) as (_, stub):
        reply = await stub.Retrieve(message, timeout=5)
        alone = await stub.Retrieve(request(k=7, sources=(TWO_TOWER,)), timeout=5)
    assert sum(c.source == TWO_TOWER for c in reply.candidates) == 7
    assert sum(c.source == POPULAR for c in reply.candidates) == 3
    # The same candidates as asking the source on its own.
    assert [c for c in candidate_keys(reply) if c[1] == TWO_TOWER] == candidate_keys(alone)


async def test_availability_update_applies_without_rebuild(index_root):
    async with retrieval(index_root) as (_, stub):
        before = await stub.Retrieve(request(k=5, sources=(POPULAR,)), timeout=5)
        top = before.candidates[0].item_id
        update = await stub.UpdateAvailability(
            pb.UpdateAvailabilityRequest(
                updates=[pb.AvailabilityUpdate(item_id=top, stock=0), pb.AvailabilityUpdate(item_id="ghost", stock=3)]
            ),
            timeout=5,
        )
        assert update.applied_count == 1 and list(update.unknown_item_ids) == ["ghost"]
        after = await stub.Retrieve(request(k=5, sources=(POPULAR,)), timeout=5)
        assert top not in {c.item_id for c in after.candidates}
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.UpdateAvailability(
                pb.UpdateAvailabilityRequest(
                    updates=[pb.AvailabilityUpdate(item_id=top, set_regions=True, sold_in_regions=["Mars"])]
                ),
                timeout=5,
            )
        assert "updates[0].sold_in_regions[0]" in details_of(failure.value)[1]
        # Regions without set_regions were ignored, the update counted as applied: refused, as the command refuses.
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.UpdateAvailability(
                pb.UpdateAvailabilityRequest(
                    updates=[pb.AvailabilityUpdate(item_id=top, stock=3, sold_in_regions=["DE"])]
                ),
                timeout=5,
            )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "updates[0].set_regions" in details_of(failure.value)[1]


async def test_hot_swap_under_concurrent_requests_with_zero_failed_calls(tmp_path):
    write_index(tmp_path, version="20260101T000000Z", seed=0)
    async with retrieval(tmp_path, index_poll_s=0.05) as (_, stub):
        versions: set[str] = set()
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client():
            while not stop.is_set():
                try:
                    reply = await stub.Retrieve(request(k=50), timeout=5)
                    assert len(reply.candidates) == 100
                    versions.add(reply.index_version.version)
                except Exception as error:  # every failure counts
                    failures.append(error)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.2)
        # A corrupt version appears first: refused, the old one keeps serving.
        bad = write_index(tmp_path, version="20260102T000000Z", seed=1)
        (bad / "item_embeddings.npy").write_bytes(b"garbage")
        await asyncio.sleep(0.5)
        assert versions == {"20260101T000000Z"}
        write_index(tmp_path, version="20260103T000000Z", seed=2)
        for _ in range(100):
            if "20260103T000000Z" in versions:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)
    assert not failures, failures[:3]
    assert versions == {"20260101T000000Z", "20260103T000000Z"}


async def test_two_shards_behind_a_router_equal_the_unsharded_index(tmp_path):
    whole = tmp_path / "whole"
    first = load_index(write_index(whole, count=4000, version="20260101T000000Z"))
    # Items sold in every listed region but not everywhere (restricted to the three), and FR's own sales too few to
    # call its list FR's: what a shard must carry over, not derive.
    restricted = first.sold_everywhere.copy()
    restricted[::2] = False
    ranked = ["GB", "DE"]
    save_index_like(first, whole, version="20260102T000000Z", sold_everywhere=restricted, popularity_regions=ranked)
    from click.testing import CliRunner

    result = CliRunner().invoke(
        index_cli, ["build", str(whole), "--out", str(tmp_path / "sharded"), "--shards", "2", "--ann", "exact"]
    )
    assert result.exit_code == 0, result.output
    messages = [
        request(k=30, sources=(TWO_TOWER, POPULAR)),
        request(k=25, sources=(I2I,), region="DE"),
        request(k=10, sources=(common.CANDIDATE_SOURCE_COLD_START,), history=()),
        # A region the index does not list: the shards keep what is sold everywhere.
        request(k=40, sources=(TWO_TOWER, POPULAR), region="NL"),
    ]
    messages[1].anchor_item_ids.extend(["I00003", "I00400"])
    async with whole_and_sharded(whole, tmp_path / "sharded") as (single, router):
        answers = await same_answers(single, router, messages)
        # The shards ranked DE's popular items by DE's sales; the whole index did too.
        assert [got.popularity_region for _, got in answers] == [want.popularity_region for want, _ in answers]
        assert answers[1][1].popularity_region == "DE"
        sizes = [
            len(
                json.loads((latest_version(tmp_path / "sharded" / f"shard-{i}") / METADATA_FILE).read_text())[
                    "checksums"
                ]
            )
            for i in range(2)
        ]
        assert all(sizes)
    everywhere = {item for item, anywhere in zip(first.item_ids, restricted, strict=True) if anywhere}
    assert {c.item_id for c in answers[3][0].candidates} <= everywhere and len(answers[3][0].candidates) == 80
    for shard in ("shard-0", "shard-1"):
        assert load_index(latest_version(tmp_path / "sharded" / shard)).popularity_regions == {"GB", "DE"}
    # Router and shards carry one version name (published and pinned together) and know how they were split.
    parts = {name: latest_version(tmp_path / "sharded" / name) for name in ("router", "shard-0", "shard-1")}
    assert len({path.name for path in parts.values()}) == 1
    builds = {name: json.loads((path / METADATA_FILE).read_text())["build"] for name, path in parts.items()}
    assert builds["router"]["shards"] == 2 and [builds[f"shard-{i}"]["shard"] for i in range(2)] == [0, 1]
    # A router given fewer targets than the index has shards refuses to load, naming both counts.
    from services.retrieval.router import ShardRouter

    lonely = ShardRouter(settings_for(tmp_path / "sharded" / "router", shard_targets="127.0.0.1:1"))
    with pytest.raises(InvalidIndex, match="built for 2 shards but 1 shard targets"):
        await lonely.connect()


async def test_shards_on_different_index_versions_are_flagged(tmp_path):
    whole = tmp_path / "whole"
    write_index(whole, count=2000, version="20260101T000000Z")
    from click.testing import CliRunner

    for _ in range(2):  # two builds: every part gets an older and a newer version
        result = CliRunner().invoke(index_cli, ["build", str(whole), "--out", str(tmp_path / "s"), "--shards", "2"])
        assert result.exit_code == 0, result.output
    old, new = sorted(p.name for p in (tmp_path / "s" / "router").iterdir() if not p.name.startswith("."))
    async with (
        retrieval(tmp_path / "s" / "shard-0" / old) as (shard0, _),  # not yet rolled
        retrieval(tmp_path / "s" / "shard-1" / new) as (shard1, _),
    ):
        targets = f"127.0.0.1:{shard0.port},127.0.0.1:{shard1.port}"
        async with retrieval(tmp_path / "s" / "router" / new, shard_targets=targets) as (_, router):
            reply = await router.Retrieve(request(k=10, sources=(POPULAR,)), timeout=5)
    assert len(reply.candidates) == 10
    [degradation] = reply.degradations
    assert degradation.reason == common.DEGRADATION_REASON_MIXED_INDEX_VERSIONS
    assert old in degradation.detail and new in degradation.detail


async def test_a_shard_that_is_down_is_dropped_and_flagged(tmp_path):
    whole = tmp_path / "whole"
    write_index(whole, count=2000, version="20260101T000000Z")
    from click.testing import CliRunner

    result = CliRunner().invoke(index_cli, ["build", str(whole), "--out", str(tmp_path / "s"), "--shards", "2"])
    assert result.exit_code == 0, result.output
    async with (
        retrieval(tmp_path / "s" / "shard-0") as (shard0, _),
        retrieval(tmp_path / "s" / "shard-1") as (
            shard1,
            _,
        ),
    ):
        targets = f"127.0.0.1:{shard0.port},127.0.0.1:{shard1.port}"
        async with retrieval(tmp_path / "s" / "router", shard_targets=targets) as (_, router):
            await shard1.stop(grace=0, drain=0)
            reply = await router.Retrieve(request(k=10, sources=(POPULAR,)), timeout=5)
    assert len(reply.candidates) == 10
    [degradation] = reply.degradations
    assert degradation.reason == common.DEGRADATION_REASON_SOURCE_DROPPED and str(shard1.port) in degradation.stage


async def test_a_router_behind_its_shards_answers_flagged_and_catches_up(tmp_path):
    from click.testing import CliRunner

    def build(whole):
        out = str(tmp_path / "s")
        result = CliRunner().invoke(index_cli, ["build", str(whole), "--out", out, "--shards", "2", "--ann", "exact"])
        assert result.exit_code == 0, result.output

    build(write_index(tmp_path / "v1", count=3000))
    build(write_index(tmp_path / "v2", count=3300))  # the next build: 300 new items, I03000..I03299
    old, new = sorted(p.name for p in (tmp_path / "s" / "router").iterdir() if not p.name.startswith("."))
    # The shards have rolled to the new build; the router's new query data is not published yet.
    (tmp_path / "s" / "router" / new).rename(tmp_path / "unpublished")
    message = request(k=300, sources=(TWO_TOWER,), history=("I00005", "I00050", "I00500"))
    async with (
        retrieval(tmp_path / "s" / "shard-0") as (shard0, _),
        retrieval(tmp_path / "s" / "shard-1") as (shard1, _),
    ):
        targets = f"127.0.0.1:{shard0.port},127.0.0.1:{shard1.port}"
        async with retrieval(tmp_path / "s" / "router", shard_targets=targets, index_poll_s=0.05) as (_, router):
            behind = await router.Retrieve(message, timeout=5)
            (tmp_path / "unpublished").rename(tmp_path / "s" / "router" / new)
            for _ in range(100):
                caught_up = await router.Retrieve(message, timeout=5)
                if not caught_up.degradations:
                    break
                await asyncio.sleep(0.05)
    history = {"I00005", "I00050", "I00500"}
    unknown = [c for c in behind.candidates if c.item_id >= "I03000"]
    assert len(behind.candidates) == 300 and unknown  # new items answered, not an INTERNAL error
    assert all(not c.anchor_item_id or c.anchor_item_id in history for c in unknown)  # the shard's own anchor
    [degradation] = behind.degradations
    assert degradation.reason == common.DEGRADATION_REASON_MIXED_INDEX_VERSIONS
    assert f"router query data is version {old}" in degradation.detail and new in degradation.detail
    assert f"{len(unknown)} two-tower candidates unknown to the router" in degradation.detail
    # Once the router's data of the new build is published, the router swaps it in and names every anchor.
    assert not caught_up.degradations and caught_up.index_version.version == new
    assert {c.anchor_item_id for c in caught_up.candidates} <= history and all(
        c.anchor_item_id for c in caught_up.candidates
    )


async def test_a_router_refuses_invalid_requests_as_an_index_server_does(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from services.retrieval.router import QueryResolver

    whole = write_index(tmp_path / "whole", count=3000, version="20260101T000000Z")
    out = str(tmp_path / "sharded")
    result = CliRunner().invoke(index_cli, ["build", str(whole), "--out", out, "--shards", "2", "--ann", "exact"])
    assert result.exit_code == 0, result.output
    resolved = []
    real_resolve = QueryResolver.resolve
    monkeypatch.setattr(QueryResolver, "resolve", lambda self, r: resolved.append(r) or real_resolve(self, r))
    anchors = request(sources=(I2I,), history=())
    anchors.anchor_item_ids.extend(f"I{i % 3000:05d}" for i in range(20_000))  # grows past 4 MB once resolved
    nan_anchor = request(sources=(I2I,), history=())
    nan_anchor.anchor_vectors.add(item_id="I00001", vector=[float("nan")] * 16)
    history = request(history=[f"I{i % 3000:05d}" for i in range(201)])
    async with whole_and_sharded(whole, tmp_path / "sharded") as (single, router):
        for message, field in (
            (anchors, "anchor_item_ids"),
            (nan_anchor, "anchor_vectors[0].vector"),
            (history, "history"),
        ):
            failures = []
            for stub in (single, router):
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await stub.Retrieve(message, timeout=5)
                failures.append(failure.value)
            assert [f.code() for f in failures] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
            assert field in details_of(failures[1])[1]
            assert details_of(failures[0])[1] == details_of(failures[1])[1]
    assert not resolved  # refused before any work


def events(*pairs: tuple[str, int]) -> list[common.Interaction]:
    return [common.Interaction(item_id=item, event_type=event) for item, event in pairs]


def by_source(response: pb.RetrieveResponse, source: int) -> list[tuple]:
    return [(c.item_id, round(c.score, 4), c.anchor_item_id) for c in response.candidates if c.source == source]


async def test_an_item_the_shopper_returned_comes_back_from_no_source(index_root):
    # The history's own items are allowed (no exclude_history): viewed, an item comes back (the two-tower source
    # finds it nearest its own vector); bought and then returned, from no source, whatever the page.
    sources = (TWO_TOWER, POPULAR, I2I, CO_VISITATION, BUY_AGAIN)
    viewed = request(k=50, sources=sources, history=("I00010", "I00020"), include_out_of_stock=True)
    viewed.anchor_item_ids.append("I00011")
    returned = pb.RetrieveRequest()
    returned.CopyFrom(viewed)
    returned.history.extend(events(("I00020", common.EVENT_TYPE_PURCHASE), ("I00020", common.EVENT_TYPE_RETURN)))
    async with retrieval(index_root) as (_, stub):
        seen = {c.item_id for c in (await stub.Retrieve(viewed, timeout=5)).candidates}
        kept = {c.item_id for c in (await stub.Retrieve(returned, timeout=5)).candidates}
    assert "I00020" in seen
    assert "I00020" not in kept and "I00010" in kept


async def test_co_visitation_and_buy_again_in_one_call(index_root):
    view, purchase, returned = common.EVENT_TYPE_VIEW, common.EVENT_TYPE_PURCHASE, common.EVENT_TYPE_RETURN
    message = request(k=0, sources=(CO_VISITATION, BUY_AGAIN), history=())
    # Oldest first. The return is no anchor and no repeat; I00010 (seen twice) is the newest anchor.
    message.history.extend(events(("I00010", view), ("I00012", purchase), ("I00010", purchase), ("I00040", returned)))
    message.source_limits.add(source=CO_VISITATION, k=5)
    message.source_limits.add(source=BUY_AGAIN, k=2)
    message.include_out_of_stock = True
    async with retrieval(index_root) as (_, stub):
        reply = await stub.Retrieve(message, timeout=5)
        # The columnar answer holds the same candidates, anchors included, and no messages.
        message.columnar = True
        columnar = await stub.Retrieve(message, timeout=5)
        message.columnar = False
        assert not columnar.candidates and candidate_keys(columnar) == candidate_keys(reply)
        assert list(columnar.columns.anchor_item_ids) == [c.anchor_item_id for c in reply.candidates]
        # Exclusions and stock apply to both sources.
        await stub.UpdateAvailability(
            pb.UpdateAvailabilityRequest(updates=[pb.AvailabilityUpdate(item_id="I00011", stock=0)]), timeout=5
        )
        filtered_message = pb.RetrieveRequest()
        filtered_message.CopyFrom(message)
        filtered_message.include_out_of_stock = False
        filtered_message.exclusions.item_ids.extend(["I00013", "I00012"])
        filtered = await stub.Retrieve(filtered_message, timeout=5)
        # The page's product is the newest anchor (and never its own recommendation).
        paged_message = request(k=5, sources=(CO_VISITATION,), history=("I00010",), include_out_of_stock=True)
        paged_message.anchor_item_ids.append("I00012")
        paged = await stub.Retrieve(paged_message, timeout=5)
        message.consent = False
        anonymous = await stub.Retrieve(message, timeout=5)
    # Item i is co-bought with i+1..i+5 (1.0, 0.8, 0.6, 0.4, 0.2); anchors I00010 (weight 1), I00012 (0.8).
    assert by_source(reply, CO_VISITATION) == [
        ("I00013", 1.4, "I00012"),
        ("I00014", 1.04, "I00012"),
        ("I00011", 1.0, "I00010"),
        ("I00012", 0.8, "I00010"),
        ("I00015", 0.68, "I00012"),
    ]
    # Buy again: count + newest position / length (3 items once returns are left out), no anchor.
    assert by_source(reply, BUY_AGAIN) == [("I00010", 3.0, ""), ("I00012", round(1 + 2 / 3, 4), "")]
    assert [(c.source, c.source_rank) for c in reply.candidates] == [(CO_VISITATION, r) for r in range(5)] + [
        (BUY_AGAIN, 0),
        (BUY_AGAIN, 1),
    ]
    stock = load_index(latest_version(index_root)).stock
    in_stock = [item for item in ("I00014", "I00015", "I00016", "I00017") if stock[int(item[1:])] > 0]
    assert by_source(filtered, CO_VISITATION) == [
        hit
        for hit in [
            ("I00014", 1.04, "I00012"),
            ("I00015", 0.68, "I00012"),
            ("I00016", 0.32, "I00012"),
            ("I00017", 0.16, "I00012"),
        ]
        if hit[0] in in_stock
    ]
    assert len(in_stock) >= 2
    assert by_source(filtered, BUY_AGAIN) == ([("I00010", 3.0, "")] if stock[10] > 0 else [])
    assert by_source(paged, CO_VISITATION) == [  # I00012 (0.64) is left out
        ("I00013", 1.48, "I00012"),
        ("I00014", 1.12, "I00012"),
        ("I00011", 0.8, "I00010"),
        ("I00015", 0.76, "I00012"),
        ("I00016", 0.4, "I00012"),
    ]
    assert not anonymous.candidates


async def test_co_visitation_and_buy_again_shards_merge_to_the_unsharded_answer(tmp_path):
    whole = tmp_path / "whole"
    write_index(whole, count=2000, version="20260101T000000Z", covisitation=True)
    from click.testing import CliRunner

    result = CliRunner().invoke(
        index_cli, ["build", str(whole), "--out", str(tmp_path / "sharded"), "--shards", "2", "--ann", "exact"]
    )
    assert result.exit_code == 0, result.output
    whole_ids = load_index(latest_version(whole)).item_ids
    held = []
    for shard in range(2):
        part = load_index(latest_version(tmp_path / "sharded" / f"shard-{shard}"))
        # Every catalog item is an anchor on every shard; the candidates are the shard's own items.
        assert part.covisitation_anchors == whole_ids and part.covisitation.anchors == 2000
        assert 0 < len(part) < 2000 and part.covisitation.rows.max() < len(part)
        held.append(set(part.item_ids))
    assert load_index(latest_version(tmp_path / "sharded" / "router")).covisitation is None
    histories = [
        ("I00010", "I00020"),
        ("I00100", "I00103", "I00100", "I01500", "I00102", "I00103"),
        tuple(f"I{n:05d}" for n in range(1000, 1240, 20)),  # more than ten anchors
    ]
    messages = [request(k=15, sources=(CO_VISITATION, BUY_AGAIN), history=h) for h in histories]
    messages[1].exclude_purchased = True
    messages[1].include_out_of_stock = True
    messages[1].history[0].event_type = common.EVENT_TYPE_PURCHASE  # I00100 leaves both sources
    messages[0].anchor_item_ids.append("I01700")  # the page's product: the newest anchor
    messages[2].exclusions.item_ids.extend(["I01181", "I01200"])
    messages[2].context.region = "DE"
    async with whole_and_sharded(whole, tmp_path / "sharded") as (single, router):
        for message, (want, got) in zip(messages, await same_answers(single, router, messages), strict=True):
            co_visited = {c.item_id for c in want.candidates if c.source == CO_VISITATION}
            assert co_visited & held[0] and co_visited & held[1]  # both shards contributed
            assert {c.source for c in want.candidates} == {CO_VISITATION, BUY_AGAIN}
            if message is messages[1]:  # I00100 was bought: excluded from both sources
                assert "I00100" not in {c.item_id for c in got.candidates}
                assert [c.item_id for c in got.candidates if c.source == BUY_AGAIN][:1] == ["I00103"]


@pytest.mark.parametrize(
    ("out", "shards", "message"),
    [
        ("a-file", 1, "is a file: give a folder of index versions"),
        ("version", 1, "is an index version: give the folder of versions"),
        ("version", 2, "is an index version: give the folder of versions"),
        ("fresh", 40, "--shards 40 is more than the index's 30 items"),
    ],
)
def test_index_build_refuses_an_out_or_a_shard_count_it_would_get_wrong(tmp_path, out, shards, message):
    from click.testing import CliRunner

    source = write_index(tmp_path / "source", count=30, version="20260101T000000Z")
    (tmp_path / "a-file").write_text("not a folder")
    targets = {"a-file": tmp_path / "a-file", "version": source, "fresh": tmp_path / "fresh"}
    before = sorted(p.name for p in source.iterdir())
    args = ["build", str(source), "--out", str(targets[out]), "--shards", str(shards), "--ann", "exact"]
    result = CliRunner().invoke(index_cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert sorted(p.name for p in source.iterdir()) == before and load_index(source).item_ids  # untouched
    assert not (tmp_path / "fresh").exists()


async def test_a_router_counts_its_calls_and_its_version_under_its_own_service_label(tmp_path):
    """Router and shards both said service="retrieval": the per-RPC panels mixed the gateway's Retrieve (fanned
    out) with the shards' slices of it, and counted each call N + 1 times."""
    from click.testing import CliRunner

    whole = tmp_path / "whole"
    write_index(whole, count=400, version="20260101T000000Z")
    sharded = tmp_path / "sharded"
    result = CliRunner().invoke(
        index_cli, ["build", str(whole), "--out", str(sharded), "--shards", "2", "--ann", "exact"]
    )
    assert result.exit_code == 0, result.output
    async with retrieval(sharded / "shard-0") as (shard0, _), retrieval(sharded / "shard-1") as (shard1, _):
        settings = settings_for(sharded / "router", shard_targets=f"127.0.0.1:{shard0.port},127.0.0.1:{shard1.port}")
        registry = CollectorRegistry()
        async with serving(ServiceHost(settings, build_application(settings, registry), registry=registry)) as host:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
                await pb_grpc.RetrievalServiceStub(channel).Retrieve(request(k=5, sources=(POPULAR,)), timeout=5)
    labels = {"service": "retrieval-router", "method": "Retrieve", "code": "OK"}
    assert registry.get_sample_value("aisle_grpc_server_handled_total", labels) == 1
    serving_versions = [
        s.labels for m in registry.collect() if m.name == "aisle_artifact_serving" for s in m.samples if s.value == 1
    ]
    assert serving_versions and all(labels["service"] == "retrieval-router" for labels in serving_versions)
