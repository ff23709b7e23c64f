from __future__ import annotations

import json

from services.core.channels import service_config


def test_retry_policy_lives_in_the_service_config():
    config = json.loads(service_config(["aisle.ranking.v1.RankingService"], max_attempts=4))
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": "aisle.ranking.v1.RankingService"}]
    assert method["retryPolicy"]["maxAttempts"] == 4
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
