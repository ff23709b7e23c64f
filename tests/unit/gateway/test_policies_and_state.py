"""Policy validation, the deadline split, variant assignment, sessions, the event log and the cache."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.gateway.budget import RequestBudget
from services.gateway.cache import AnonymousCache
from services.gateway.candidates import Candidates
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import ComponentBase, Params
from services.gateway.events import EventLogFull, JsonlEventSink, read_events
from services.gateway.pipeline import Pipeline, PipelineMetrics
from services.gateway.policies import DEFAULT_POLICY_FILE, PolicyError, build_policies, load_policies
from services.gateway.sessions import InMemorySessionStore, subject_key
from tests.unit.gateway.helpers import CATALOG, deps, state, traced_growth

RAW = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())


def test_the_shipped_policies_load_and_cover_every_surface():
    policies = load_policies(DEFAULT_POLICY_FILE, CATALOG, deps())
    assert set(policies.pipelines) >= {"home", "home_diverse", "product_page", "cart", "email"}
    assert policies.pipeline_for(common.SURFACE_HOME, "diverse").name == "home_diverse"
    assert policies.pipeline_for(common.SURFACE_HOME, "control").name == "home"
    assert policies.pipeline_for(common.SURFACE_CART, "diverse").name == "cart"
    assert policies.model_for("control") == ("", "")


def test_a_variant_can_name_a_ranking_model_version():
    raw = copy.deepcopy(RAW)
    raw["experiment"]["variants"][1].update(model_name="sequence_ranker", model_version="3")
    policies = build_policies(raw, CATALOG, deps())
    assert policies.model_for("diverse") == ("sequence_ranker", "3")
    raw["experiment"]["variants"][1]["model_version"] = "latest"
    with pytest.raises(PolicyError, match="model_version"):
        build_policies(raw, CATALOG, deps())


@pytest.mark.parametrize(
    ("step", "component", "params", "field"),
    [
        ("filters", "RecentlyBoughtFilter", {"days": float("inf")}, "days"),  # failed every request: timedelta
        ("filters", "RecentlyBoughtFilter", {"days": 1e9}, "days"),
        ("filters", "RecentlyBoughtFilter", {"days": 0}, "days"),
        ("selectors", "MMRDiversitySelector", {"window": -1}, "window"),  # reordered the worst items to the top
        ("selectors", "MMRDiversitySelector", {"relevance_weight": 60}, "relevance_weight"),  # a percentage
        ("selectors", "BrandQuotaSelector", {"max_per_brand": 0}, "max_per_brand"),
        ("selectors", "ExposureCapSelector", {"max_exposures": 0}, "max_exposures"),
        ("selectors", "ExplorationSelector", {"slots": -1}, "slots"),
        ("scorers", "RankingScorer", {"share": 0}, "share"),
        ("scorers", "RankingScorer", {"popularity_blend": float("nan")}, "popularity_blend"),
        ("sources", "CachedPopularSource", {"share": 1.5}, "share"),
    ],
)
def test_a_parameter_out_of_its_range_is_refused_at_load_naming_it(step, component, params, field):
    raw = copy.deepcopy(RAW)
    raw["policies"]["home"][step].insert(0, {"component": component, "params": params})
    with pytest.raises(PolicyError, match=rf"policies\.home\.{step}\[0\] \({component}\): {field}: "):
        build_policies(raw, CATALOG, deps())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r["policies"]["home"]["filters"].append({"component": "NoSuchFilter"}),
            "policies.home.filters[2]: unknown component 'NoSuchFilter'",
        ),
        (
            lambda r: r["policies"]["home"]["selectors"][1].update(params={"max_exposures": "lots"}),
            "policies.home.selectors[1] (ExposureCapSelector): max_exposures",
        ),
        (
            lambda r: r["policies"]["home"]["selectors"][1].update(params={"colour": 1}),
            "colour: Extra inputs are not permitted",
        ),
        (
            lambda r: r["policies"]["home"]["filters"].append({"component": "SortSelector"}),
            "SortSelector is a selector, not a filter",
        ),
        (lambda r: r["surfaces"].pop("email"), "surfaces: no policy for email"),
        (
            lambda r: r["experiment"]["variants"][1]["surfaces"].update(home="nope"),
            "experiment.variants.diverse.surfaces.home: unknown 'nope'",
        ),
        (
            lambda r: r["policies"]["home"]["sources"][0]["params"]["sources"].update(telepathy=10),
            "policies.home.sources[0] (RetrievalSources): sources.telepathy",
        ),
        (
            lambda r: r["policies"]["email"]["sources"][0]["params"].update(source="telepathy"),
            "policies.email.sources[0] (RetrievalSource): source",
        ),
        (lambda r: r["policies"]["cart"].update(sources=[]), "policies.cart.sources: List should have at least 1"),
        (
            lambda r: r["policies"]["home"]["selectors"].pop(),
            "policies.home.selectors: must end with TruncateSelector",
        ),
        (
            lambda r: r["policies"]["home"].update(selectors=[]),
            "policies.home.selectors: must end with TruncateSelector",
        ),
        (  # the quota keeps k + depth rows: a cap after it could find them all over-exposed and show them anyway
            lambda r: r["policies"]["home_diverse"]["selectors"].insert(4, {"component": "ExposureCapSelector"}),
            "policies.home_diverse.selectors: ExposureCapSelector must come before BrandQuotaSelector",
        ),
    ],
)
def test_a_bad_policy_stops_start_up_saying_where(edit, message):
    raw = copy.deepcopy(RAW)
    edit(raw)
    with pytest.raises(PolicyError) as error:
        build_policies(raw, CATALOG, deps())
    assert message in str(error.value)


def test_expected_profit_scoring_before_ranking_or_without_it_is_refused():
    """Before RankingScorer it reads no P(purchase) and no relevance: every item's profit is the same, its "final"
    score 0 for all, and ranking's scores are then ignored (the answer keeps retrieval order, unflagged)."""
    priced = ItemCatalog({"a": {"category": "c", "brand": "b", "price": 10.0, "margin": 0.3}})
    raw = copy.deepcopy(RAW)
    scorers = raw["policies"]["home"]["scorers"]
    scorers.insert(0, {"component": "ExpectedProfitScorer"})
    message = "policies.home.scorers: ExpectedProfitScorer must come after RankingScorer"
    with pytest.raises(PolicyError, match=message):
        build_policies(raw, priced, deps())
    scorers.pop(1)  # without RankingScorer at all
    with pytest.raises(PolicyError, match=message):
        build_policies(raw, priced, deps())
    scorers.insert(0, {"component": "RankingScorer"})
    assert build_policies(raw, priced, deps()).pipelines["home"].scorers[1].name == "ExpectedProfitScorer"


def test_a_component_needing_a_missing_catalog_feature_is_refused():
    no_brands = ItemCatalog({"a": {"category": "c"}})
    with pytest.raises(PolicyError, match=r"BrandQuotaSelector needs catalog feature\(s\) \['brand'\]"):
        build_policies(copy.deepcopy(RAW), no_brands, deps())


def test_variant_assignment_is_stable_and_balanced():
    policies = load_policies(DEFAULT_POLICY_FILE, CATALOG, deps())
    keys = [subject_key(common.Subject(user_id=f"user-{i}")) for i in range(10_000)]
    first = [policies.variant_for(k) for k in keys]
    assert first == [policies.variant_for(k) for k in keys]
    share = first.count("control") / len(first)
    assert 0.47 <= share <= 0.53, share
    assert policies.variant_for(keys[0], override="diverse") == "diverse"
    with pytest.raises(KeyError):
        policies.variant_for(keys[0], override="nope")


class SlowSource(ComponentBase):
    """Never answers on its own; records the timeout it was handed and whether it was cut (cancelled)."""

    kind = "source"
    share = 0.2
    fail_open = True

    def __init__(self, *args):
        super().__init__(*args)
        self.timeouts: list[float] = []
        self.cancelled = False

    async def fetch(self, state, timeout):
        self.timeouts.append(timeout)
        try:
            await asyncio.Event().wait()  # only the pipeline's cut ends this
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Candidates.empty()


class QuickSource(ComponentBase):
    kind = "source"
    share = 0.2
    fail_open = True

    async def fetch(self, state, timeout):
        return Candidates.of(["i1"], common.CANDIDATE_SOURCE_POPULARITY)


async def test_a_slow_source_is_cut_at_its_slice_and_the_answer_comes_in_budget():
    from prometheus_client import CollectorRegistry

    slow = SlowSource("Slow", Params(), deps())
    pipeline = Pipeline("p", "1", [slow, QuickSource("Quick", Params(), deps())], [], [], [], [], [])
    request_state = state(budget_s=0.1)
    request_state.budget = RequestBudget(0.1, None, 0.001, clock=lambda: 0.0)  # frozen: the slice is exact
    items = await asyncio.wait_for(pipeline.run(request_state, PipelineMetrics(CollectorRegistry())), 5)
    assert items.ids() == ["i1"]
    # The slow source was handed its slice, 20 ms (0.2 x 100 ms), and cut there.
    assert slow.timeouts == [pytest.approx(0.02)]  # 0.2 x 0.1 s
    assert slow.cancelled
    [degradation] = request_state.degradations
    assert degradation.reason == common.DEGRADATION_REASON_SOURCE_DROPPED and degradation.stage == "Slow"
    assert degradation.detail == "no answer within 20 ms"


async def test_each_stage_gets_a_span_from_the_sdk_tracer_not_the_api_proxy(span_exporter):
    from opentelemetry import trace
    from prometheus_client import CollectorRegistry

    metrics = PipelineMetrics(CollectorRegistry())
    assert not isinstance(metrics.tracer, trace.ProxyTracer)  # the provider was set before (tests/conftest.py)
    pipeline = Pipeline("p", "1", [QuickSource("Quick", Params(), deps())], [], [], [], [], [])
    span_exporter.clear()
    with metrics.tracer.start_as_current_span("request") as parent:
        await pipeline.run(state(budget_s=0.1), metrics)
    stages = {s.name: s for s in span_exporter.get_finished_spans() if s.parent is not None}
    assert {"retrieval", "filtering", "scoring", "selection"} <= set(stages)
    assert {stages[name].parent.span_id for name in ("retrieval", "selection")} == {parent.get_span_context().span_id}
    assert "Quick" not in stages  # component spans are opt-in (trace_components)


async def test_session_store_bounds_events_and_expires():
    now = [0.0]
    store = InMemorySessionStore(ttl_s=10, max_events=3, max_sessions=2, clock=lambda: now[0])
    await store.append("a", [common.Interaction(item_id=str(i)) for i in range(5)])
    assert [e.item_id for e in await store.history("a")] == ["2", "3", "4"]
    await store.append("b", [common.Interaction(item_id="x")])
    await store.append("c", [common.Interaction(item_id="y")])
    assert await store.history("a") == [] and len(store) == 2  # least recently used went first
    now[0] = 11.0
    assert await store.history("b") == []


def long_events(tag: str, count: int, length: int = 256) -> list[common.Interaction]:
    """Events as large as a caller can make them: item ids of the longest valid length, an event time each."""
    events = []
    for n in range(count):
        event = common.Interaction(item_id=f"{tag}-{n}".ljust(length, "x"), event_type=common.EVENT_TYPE_VIEW)
        event.event_time.seconds = 1_700_000_000
        events.append(event)
    return events


async def test_session_store_holds_at_most_max_bytes_dropping_the_least_recently_used():
    store = InMemorySessionStore(max_events=200, max_bytes=1024 * 1024)
    for n in range(60):  # 200 events of 256-character ids: about 60 KB a session
        await store.append(f"s{n}", long_events(str(n), 200))
        assert store.bytes <= 1024 * 1024
        assert len(await store.history(f"s{n}")) == 200, "the session just written is kept"
    assert 10 <= len(store) <= 17
    assert await store.history("s0") == []  # the first written, least recently used, went first


async def test_session_store_counts_its_bytes_through_trims_expiry_and_eviction():
    now = [0.0]
    store = InMemorySessionStore(ttl_s=10, max_events=3, clock=lambda: now[0])
    await store.append("a", long_events("a", 3))
    one = store.bytes
    await store.append("a", long_events("b", 3))  # three replace three of the same size
    assert store.bytes == one
    await store.add_exposures("a", ["i1", "i2", "i1"])
    with_exposures = store.bytes
    assert with_exposures > one
    await store.add_exposures("a", ["i1", "i2"])  # counts of items already counted cost nothing more
    assert store.bytes == with_exposures
    await store.append("b", long_events("c", 3))
    now[0] = 11.0  # both expired: the next write drops them, not only the next read of each
    await store.append("c", long_events("d", 3))
    assert len(store) == 1 and store.bytes == one


async def test_session_store_keeps_the_recently_read_session_over_an_older_one():
    store = InMemorySessionStore(max_events=200, max_bytes=200 * 1024)
    for key in ("a", "b", "c"):
        await store.append(key, long_events(key, 200))
    assert len(store) == 3
    assert await store.history("a")  # a is now the most recently used
    await store.append("d", long_events("d", 200))
    assert await store.history("b") == [], "the least recently used session went"
    assert all([await store.history(key) for key in ("a", "c", "d")])


async def test_session_store_byte_count_covers_what_it_holds():
    """The counted bytes follow the memory the sessions really hold (traced): events are kept serialized, so each
    costs its size and a fixed overhead, not a message's several hundred bytes more."""
    store = InMemorySessionStore(max_events=200)
    writes = [(f"{n:032d}", long_events(str(n), 50, length=64)) for n in range(200)]
    shown = [[f"{n}-{i}".ljust(32, "y") for i in range(20)] for n in range(200)]
    with traced_growth() as measured:
        for (key, events), items in zip(writes, shown, strict=True):
            await store.append(key, events)
            await store.add_exposures(key, items)
        del writes, shown, key, events, items
    assert len(store) == 200
    assert measured.held <= store.bytes <= 1.6 * measured.held, (measured.held, store.bytes)


def test_subject_keys_hide_ids():
    key = subject_key(common.Subject(user_id="alice@example.com"))
    assert "alice" not in key and len(key) == 32
    assert key != subject_key(common.Subject(session_id="alice@example.com"))


async def test_jsonl_event_log_round_trip_and_overload(tmp_path: Path):
    sink = JsonlEventSink(tmp_path / "events.jsonl", max_pending=3)
    await sink.start()
    await sink.write([{"type": "click", "item_id": "a"}, {"type": "purchase", "item_id": "b"}])
    await sink.flush()
    with pytest.raises(EventLogFull):
        await sink.write([{"n": i} for i in range(4)])
    await sink.close()
    assert [e["item_id"] for e in read_events(tmp_path / "events.jsonl")] == ["a", "b"]


def test_anonymous_cache_segments_and_invalidation():
    cache = AnonymousCache(ttl_s=60)
    request = pb.RecommendRequest(subject=common.Subject(session_id="s"), surface=common.SURFACE_HOME)
    segment = cache.segment(request, "control", 10)
    assert segment is not None
    signed_in = pb.RecommendRequest(subject=common.Subject(user_id="u"), consent=True)
    assert cache.segment(signed_in, "control", 10) is None
    cache.put(segment, pb.RecommendResponse(tracking_token="t"))
    cache.observe_versions([common.ArtifactVersion(kind="model", name="ranker", version="1")])
    assert cache.get(segment) is not None
    cache.observe_versions([common.ArtifactVersion(kind="model", name="ranker", version="2")])
    assert cache.get(segment) is None


def test_a_policy_file_that_cannot_be_read_says_which_setting_points_at_it(tmp_path):
    with pytest.raises(PolicyError, match=r"missing\.yaml: .*set AISLE_GATEWAY_POLICY_FILE \(--policy-file\)"):
        load_policies(tmp_path / "missing.yaml", CATALOG, deps())


def test_a_policy_ranking_more_candidates_than_ranking_accepts_is_refused():
    """Ranking refuses a call with more than its max_candidates: every answer of such a policy would be the
    fallback order, flagged RANKING_UNAVAILABLE, as if ranking were down."""
    raw = copy.deepcopy(RAW)
    raw["policies"]["home"]["candidate_limit"] = 2500
    build_policies(raw, CATALOG, deps())  # without the limit: nothing to compare with
    with pytest.raises(PolicyError, match=r"policies\.home\.candidate_limit: 2500 is more than ranking accepts"):
        build_policies(raw, CATALOG, deps(), ranking_max_candidates=2000)
    raw["policies"]["home"]["scorers"] = []  # a policy that does not rank may gather more
    build_policies(raw, CATALOG, deps(), ranking_max_candidates=2000)


def test_the_gateway_refuses_to_start_on_a_policy_ranking_more_than_its_ranking_max_candidates(tmp_path):
    from services.gateway.app import build_application
    from services.gateway.settings import GatewaySettings

    raw = copy.deepcopy(RAW)
    raw["policies"]["home"]["candidate_limit"] = 1500
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(yaml.safe_dump(raw))
    settings = GatewaySettings(
        catalog_path=None, metrics_port=None, event_log="off", policy_file=policy_file, ranking_max_candidates=1000
    )
    with pytest.raises(PolicyError, match="AISLE_GATEWAY_RANKING_MAX_CANDIDATES"):
        build_application(settings)
