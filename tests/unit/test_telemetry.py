from __future__ import annotations

from services.core.telemetry import otlp_endpoint_configured


def test_nothing_is_exported_without_an_endpoint():
    assert not otlp_endpoint_configured({})


def test_either_endpoint_variable_turns_export_on():
    assert otlp_endpoint_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert otlp_endpoint_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})


def test_traces_exporter_none_wins():
    assert not otlp_endpoint_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}
    )
