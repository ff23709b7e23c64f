from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from services.core.telemetry import ActiveSpan, otlp_endpoint_configured


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
