"""``ArtifactMetrics``: one serving series per kind, moved (not added) when the version changes; refusals counted."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from services.core.metrics import ArtifactMetrics


def serving(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["kind"], sample.labels["version"]): sample.value
        for metric in registry.collect()
        if metric.name == "aisle_artifact_serving"
        for sample in metric.samples
    }


def test_a_new_version_replaces_the_old_ones_series_and_each_kind_has_its_own():
    registry = CollectorRegistry()
    metrics = ArtifactMetrics(registry, "retrieval")
    metrics.serving("index", "20260101T000000Z")
    metrics.serving("router_query_data", "20260101T000000Z")
    metrics.serving("index", "20260102T000000Z")
    metrics.serving("index", "20260102T000000Z")  # the same again: nothing changes
    assert serving(registry) == {("index", "20260102T000000Z"): 1.0, ("router_query_data", "20260101T000000Z"): 1.0}
    metrics.serving("router_query_data", "")  # nothing served any more
    assert serving(registry) == {("index", "20260102T000000Z"): 1.0}


def test_refusals_are_counted_by_kind():
    registry = CollectorRegistry()
    metrics = ArtifactMetrics(registry, "ranking")
    metrics.refused("model")
    metrics.refused("model")
    assert registry.get_sample_value("aisle_artifact_refused_total", {"service": "ranking", "kind": "model"}) == 2


def test_a_refusal_records_its_time_for_the_alert():
    """The alert reads the time of the last refusal: a start-up refusal precedes the first scrape, where a count's
    series would first appear at 1 and show no increase."""
    registry = CollectorRegistry()
    metrics = ArtifactMetrics(registry, "retrieval")
    labels = {"service": "retrieval", "kind": "index"}
    assert registry.get_sample_value("aisle_artifact_last_refusal_timestamp_seconds", labels) is None
    before = time.time()
    metrics.refused("index")
    assert before <= registry.get_sample_value("aisle_artifact_last_refusal_timestamp_seconds", labels) <= time.time()
