"""One trace spans gateway -> retrieval -> ranking (spans captured by the in-memory exporter)."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from tests.integration.conftest import stack
from tests.integration.requests import home_request
from tests.integration.test_recommend_path import history_of, recommend


async def test_one_trace_id_spans_all_three_services(trained, span_exporter):
    async with stack(trained) as hosts:
        span_exporter.clear()
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained)))
    spans = [s for s in span_exporter.get_finished_spans() if format(s.context.trace_id, "032x") == response.trace_id]
    server_spans = {s.name for s in spans if s.kind == SpanKind.SERVER}
    assert server_spans == {
        "/aisle.recommendation.v1.RecommendationService/Recommend",
        "/aisle.retrieval.v1.RetrievalService/Retrieve",
        "/aisle.ranking.v1.RankingService/Rank",
    }
    client_spans = {s.name for s in spans if s.kind == SpanKind.CLIENT}
    assert {"/aisle.retrieval.v1.RetrievalService/Retrieve", "/aisle.ranking.v1.RankingService/Rank"} <= client_spans
    internal = {s.name for s in spans if s.kind == SpanKind.INTERNAL}
    assert {"retrieval", "filtering", "scoring", "selection"} <= internal
    assert "RankingScorer" not in internal and "TwoTowerSource" not in internal  # component spans are opt-in
    # Retrieve's span says what each source found.
    [retrieve] = [s for s in spans if s.kind == SpanKind.SERVER and s.name.endswith("RetrievalService/Retrieve")]
    assert retrieve.attributes["aisle.candidates.TwoTowerSource"] > 0


async def test_component_spans_when_asked_for(trained, span_exporter):
    async with stack(trained, {"trace_components": True}, {"trace_sources": True}) as hosts:
        span_exporter.clear()
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained)))
    spans = [s for s in span_exporter.get_finished_spans() if format(s.context.trace_id, "032x") == response.trace_id]
    by_name = {s.name: s for s in spans}
    assert {"Retrieval", "RecentlyBoughtFilter", "RankingScorer", "SortSelector", "TruncateSelector"} <= set(by_name)
    # Each component span sits inside its stage's span.
    assert by_name["RankingScorer"].parent.span_id == by_name["scoring"].context.span_id
    # Retrieval's source spans sit inside its Retrieve span.
    [retrieve] = [s for s in spans if s.kind == SpanKind.SERVER and s.name.endswith("RetrievalService/Retrieve")]
    assert by_name["TwoTowerSource"].parent.span_id == retrieve.context.span_id
    # Nothing from this request leaked into another trace.
    others = [s for s in span_exporter.get_finished_spans() if s not in spans and s.kind == SpanKind.SERVER]
    assert not others
