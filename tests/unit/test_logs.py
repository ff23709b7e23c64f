"""The throttled warning: one line per outage interval, with the count of those held back."""

from __future__ import annotations

import logging

from services.core.logs import Throttled


def test_a_recurring_warning_is_logged_once_per_interval_with_the_count_held_back(caplog):
    now = [100.0]
    throttled = Throttled(logging.getLogger("test.throttled"), every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(50):  # fifty requests in one second of an outage
            throttled.warning("redis", "session store unavailable: %s", "refused")
        throttled.warning("shard-1", "shard %s dropped", "shard-1")  # another key has its own interval
        now[0] += 12
        throttled.warning("redis", "session store unavailable: %s", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "session store unavailable: refused",
        "shard shard-1 dropped",
        "session store unavailable: refused (49 more like it in the last 12 s)",
    ]
