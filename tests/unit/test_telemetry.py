from __future__ import annotations

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


def test_an_active_span_is_current_in_its_block_and_ended_after_it(span_exporter):
    tracer = trace.get_tracer(__name__)
    outer = trace.get_current_span()
    span_exporter.clear()
    with ActiveSpan(tracer.start_span("block")) as span:
        assert trace.get_current_span() is span
    assert trace.get_current_span() is outer
    [finished] = span_exporter.get_finished_spans()
    assert finished.name == "block" and finished.status.status_code == StatusCode.UNSET and not finished.events


@pytest.mark.parametrize("record_errors", [True, False])
def test_an_error_leaving_an_active_span_is_recorded_unless_the_span_keeps_its_own_status(span_exporter, record_errors):
    tracer = trace.get_tracer(__name__)
    span_exporter.clear()
    with pytest.raises(ValueError), ActiveSpan(tracer.start_span("block"), record_errors=record_errors):
        raise ValueError("bad")
    [finished] = span_exporter.get_finished_spans()
    assert finished.end_time is not None
    if record_errors:  # as tracer.start_as_current_span does
        assert finished.status.status_code == StatusCode.ERROR and finished.status.description == "ValueError: bad"
        assert [event.name for event in finished.events] == ["exception"]
    else:
        assert finished.status.status_code == StatusCode.UNSET and not finished.events
    assert trace.get_current_span() is not finished
