from __future__ import annotations

import pytest

from services.core.settings import SettingsError, describe_settings, load_settings
from services.gateway.settings import GatewaySettings
from services.ranking.settings import RankingSettings
from services.retrieval.settings import RetrievalSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("AISLE_"):
            monkeypatch.delenv(name)


def test_defaults_load():
    settings = load_settings(RetrievalSettings)
    assert settings.port == 50061 and settings.metrics_port == 9461


def test_environment_is_read_with_the_service_prefix(monkeypatch):
    monkeypatch.setenv("AISLE_RANKING_PORT", "6000")
    monkeypatch.setenv("AISLE_RANKING_METRICS_PORT", "none")
    settings = load_settings(RankingSettings)
    assert settings.port == 6000 and settings.metrics_port is None


def test_none_as_a_flag_unsets_an_optional_setting_as_it_does_in_the_environment():
    gateway = load_settings(GatewaySettings, {"metrics_port": "none", "catalog_path": "none"})
    assert gateway.metrics_port is None and gateway.catalog_path is None
    assert load_settings(RankingSettings, {"max_queue_delay_us": "none"}).max_queue_delay_us is None
    with pytest.raises(SettingsError, match="AISLE_GATEWAY_PORT / --port"):  # not optional: none is a bad value
        load_settings(GatewaySettings, {"port": "none"})


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("AISLE_GATEWAY_DEFAULT_K", "7")
    assert load_settings(GatewaySettings, {"default_k": "9", "port": None}).default_k == 9


def test_a_bad_value_names_the_variable_and_the_flag(monkeypatch):
    monkeypatch.setenv("AISLE_RETRIEVAL_PORT", "seventy")
    with pytest.raises(SettingsError) as error:
        load_settings(RetrievalSettings)
    message = str(error.value)
    assert "AISLE_RETRIEVAL_PORT / --port" in message and "'seventy'" in message


def test_every_bad_setting_is_listed():
    with pytest.raises(SettingsError) as error:
        load_settings(GatewaySettings, {"port": "99999", "total_budget_ms": "-1"})
    assert "--port" in str(error.value) and "--total-budget-ms" in str(error.value)


def test_fallback_regions_that_are_not_region_codes_are_refused_with_the_form_to_use(monkeypatch):
    # "GB;DE" would warm one list under a key no request names, and the setting would do nothing.
    monkeypatch.setenv("AISLE_GATEWAY_FALLBACK_REGIONS", "GB;DE,FR")
    with pytest.raises(SettingsError) as error:
        load_settings(GatewaySettings)
    message = str(error.value)
    assert "AISLE_GATEWAY_FALLBACK_REGIONS" in message and "'GB;DE'" in message and "e.g. GB,DE,FR" in message
    monkeypatch.setenv("AISLE_GATEWAY_FALLBACK_REGIONS", "GB, DE,FR")
    assert load_settings(GatewaySettings).fallback_region_list == ["GB", "DE", "FR"]


def test_cross_field_rule_is_checked():
    with pytest.raises(SettingsError, match="retrieval_share"):
        load_settings(GatewaySettings, {"retrieval_share": "0.6", "ranking_share": "0.5"})


def test_an_event_buffer_smaller_than_one_call_is_refused():
    with pytest.raises(SettingsError, match="event_log_max_pending"):
        load_settings(GatewaySettings, {"event_log_max_pending": "100", "max_events_per_call": "1000"})
    assert load_settings(GatewaySettings, {"event_log": "off", "event_log_max_pending": "100"}).event_log == "off"


def test_a_cross_setting_error_names_the_settings_it_involves_not_a_question_mark(monkeypatch):
    monkeypatch.setenv("AISLE_GATEWAY_EVENT_LOG_MAX_PENDING", "10")
    with pytest.raises(SettingsError) as error:
        load_settings(GatewaySettings)
    assert str(error.value).splitlines() == [
        "invalid gateway settings:",
        "  event_log_max_pending (10) must be at least max_events_per_call (1000): a call of that many events would "
        "be refused on every retry (set with AISLE_GATEWAY_EVENT_LOG_MAX_PENDING / --event-log-max-pending, "
        "AISLE_GATEWAY_MAX_EVENTS_PER_CALL / --max-events-per-call)",
    ]


def test_a_misspelt_variable_is_refused_rather_than_ignored(monkeypatch):
    monkeypatch.setenv("AISLE_RETRIEVAL_PROT", "1")
    with pytest.raises(SettingsError, match="AISLE_RETRIEVAL_PROT"):
        load_settings(RetrievalSettings)


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="colour"):
        load_settings(RankingSettings, {"colour": "blue"})


def test_model_version_must_be_numeric():
    with pytest.raises(SettingsError, match="AISLE_RANKING_MODEL_VERSION"):
        load_settings(RankingSettings, {"model_version": "latest"})


def test_describe_lists_every_setting_with_its_variable():
    rows = describe_settings(RetrievalSettings)
    assert ("AISLE_RETRIEVAL_INDEX_PATH", "--index-path") in {(r[0], r[1]) for r in rows}
    assert all(description for *_, description in rows)
