"""One logging set-up for every service and command."""

from __future__ import annotations

import logging
import sys
import time


def configure_logging(level: str = "INFO", service: str = "aisle") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttled:
    """A warning that may recur on every request during an outage (a store down, a shard dropped), logged at most
    once per ``every_s`` seconds per ``key``, with the count of the ones held back since: one line per outage
    interval, not one per call (the metrics count the calls)."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock=time.monotonic):
        self._logger, self.every_s, self._clock = logger, every_s, clock
        #: key -> (when last logged, how many held back since)
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        held = last[1] if last is not None else 0
        if held:
            message += f" ({held} more like it in the last {now - last[0]:.0f} s)"
        self._last[key] = (now, 0)
        if len(self._last) > 1024:  # keys come from a bounded set (shard targets); kept bounded all the same
            self._last.pop(next(iter(self._last)))
        self._logger.warning(message, *args)
