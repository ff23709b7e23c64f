from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from services.core.telemetry import ActiveSpan, current_trace_id, otlp_endpoint_configured


def test_nothing_is_exported_without_an_endpoint():
    assert not otlp_endpoint_configured({})


def test_either_endpoint_variable_turns_export_on():
    assert otlp_endpoint_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert otlp_endpoint_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})


def test_traces_exporter_none_wins():
    assert not otlp_endpoint_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}
    )


def finished(exporter, name: str):
    """The one finished span of that name (the exporter is the whole session's)."""
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_an_active_span_is_current_in_its_block_and_ended_after_it(span_exporter):
    tracer = trace.get_tracer(__name__)
    outer = trace.get_current_span()
    span_exporter.clear()
    with ActiveSpan(tracer.start_span("outer-block")) as parent:
        assert trace.get_current_span() is parent
        with ActiveSpan(tracer.start_span("inner-block")) as child:
            assert trace.get_current_span() is child
        assert trace.get_current_span() is parent
    assert trace.get_current_span() is outer
    inner, outer_span = finished(span_exporter, "inner-block"), finished(span_exporter, "outer-block")
    assert inner.parent.span_id == outer_span.context.span_id and inner.context.trace_id == outer_span.context.trace_id
    assert outer_span.status.status_code == StatusCode.UNSET and not outer_span.events


@pytest.mark.parametrize("record_errors", [True, False])
def test_an_error_leaving_an_active_span_is_recorded_unless_the_span_keeps_its_own_status(span_exporter, record_errors):
    tracer = trace.get_tracer(__name__)
    outer = trace.get_current_span()
    span_exporter.clear()
    with pytest.raises(ValueError), ActiveSpan(tracer.start_span("failing-block"), record_errors=record_errors):
        raise ValueError("bad")
    assert trace.get_current_span() is outer
    span = finished(span_exporter, "failing-block")
    if record_errors:  # as tracer.start_as_current_span does
        assert span.status.status_code == StatusCode.ERROR and span.status.description == "ValueError: bad"
        assert [event.name for event in span.events] == ["exception"]
    else:
        assert span.status.status_code == StatusCode.UNSET and not span.events


async def test_a_cancelled_task_ends_its_active_span_unrecorded_and_leaves_its_context(span_exporter):
    tracer = trace.get_tracer(__name__)
    span_exporter.clear()
    entered, outer = asyncio.Event(), trace.get_current_span()

    async def waiting() -> None:
        with ActiveSpan(tracer.start_span("awaiting-block")) as span:
            await asyncio.sleep(0)  # other tasks ran meanwhile: the span is still this task's current one
            assert trace.get_current_span() is span
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(waiting())
    await entered.wait()
    assert trace.get_current_span() is outer  # the task's span is current in the task only
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = finished(span_exporter, "awaiting-block")
    assert span.end_time is not None
    assert span.status.status_code == StatusCode.UNSET and not span.events  # cancelled is not an error


@pytest.mark.parametrize(
    ("attributes", "name"),
    [("", "aisle-gateway"), ("service.name=shop-gateway,deployment.environment=prod", "shop-gateway")],
)
def test_a_service_name_among_the_resource_attributes_wins_over_aisles_default(attributes, name):
    """The OTel conventions let OTEL_RESOURCE_ATTRIBUTES name the service; Aisle's default overrode it."""
    code = (
        "from services.core.telemetry import configure_tracing\n"
        "provider = configure_tracing('aisle-gateway')\n"
        "print(provider.resource.attributes['service.name'])"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment["OTEL_RESOURCE_ATTRIBUTES"] = attributes
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environment)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[0] == name


async def test_waiting_for_a_dependency_logs_by_the_clock_not_by_the_sleeps_between_checks(monkeypatch, caplog):
    """Each check may wait out its own timeout (a name that resolves to a host dropping packets): counting only the
    0.1 s sleeps logged about every 55 s instead of every log_every_s."""
    from services.core import health

    checks = []

    async def slow_check(channel, service, timeout=1.0):
        checks.append(service)
        await asyncio.sleep(0.3)
        return len(checks) > 4

    monkeypatch.setattr(health, "is_serving", slow_check)
    with caplog.at_level("INFO", logger="services.core.health"):
        await health.wait_until_serving(None, "aisle.retrieval.v1.RetrievalService", log_every_s=0.5)
    assert sum("waiting for" in record.getMessage() for record in caplog.records) >= 2


def test_the_trace_id_answered_is_one_the_tracing_backend_keeps():
    """Under a 5 % sampler, 95 % of the ids answered were of traces no one exported."""
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with trace.use_span(NonRecordingSpan(unsampled)):
        assert current_trace_id() == ""
    sampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(sampled)):
        assert current_trace_id() == format(0xABC, "032x")
    assert current_trace_id() == ""  # no span at all
