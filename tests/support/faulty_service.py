"""``python -m tests.support.faulty_service <retrieval|ranking|gateway>``: the service exactly as its ``__main__``
runs it (same settings, bootstrap, signal handling), plus one fault a test switches from outside with signals:

- SIGUSR1: every call to the service's own RPCs (not health, not reflection) is held ``$AISLE_FAULT_DELAY_MS``
  before it runs: a server that is up but slow, as ``tests/integration/test_slow_dependencies.py`` makes one
  in-process.
- SIGUSR2: calls run at once again.
- A call carrying the metadata ``aisle-fault-hold-ms: <ms>`` is held that long, whatever the switch says: a test
  keeps its own calls in flight (to SIGTERM the server under them) without slowing anyone else's.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys

import grpc

from services.core.bootstrap import serve_main  # first: it sets the thread-pool variables before numpy loads

#: The held time, in milliseconds, when the delay is switched on.
DELAY_VARIABLE = "AISLE_FAULT_DELAY_MS"
#: Metadata key of the per-call hold.
HOLD_METADATA = "aisle-fault-hold-ms"
SERVICES = {
    "retrieval": ("services.retrieval.app", "services.retrieval.settings", "RetrievalSettings"),
    "ranking": ("services.ranking.app", "services.ranking.settings", "RankingSettings"),
    "gateway": ("services.gateway.app", "services.gateway.settings", "GatewaySettings"),
}


class SignalledDelay(grpc.aio.ServerInterceptor):
    """A server interceptor that holds calls to ``aisle.*`` methods while switched on."""

    def __init__(self, seconds: float):
        self.seconds, self.on = seconds, False

    async def intercept_service(self, continuation, details):
        if details.method.startswith("/aisle."):
            hold = next((float(v) / 1000 for k, v in details.invocation_metadata or () if k == HOLD_METADATA), 0.0)
            if self.on or hold:
                await asyncio.sleep(max(hold, self.seconds if self.on else 0.0))
        return await continuation(details)


def main(service: str) -> int:
    app_module, settings_module, settings_class = SERVICES[service]
    build_application = importlib.import_module(app_module).build_application
    settings_cls = getattr(importlib.import_module(settings_module), settings_class)
    delay = SignalledDelay(float(os.environ.get(DELAY_VARIABLE, "300")) / 1000)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(delay, "on", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(delay, "on", False))

    def build(settings, registry):
        app = build_application(settings, registry)
        app.extra_interceptors = [*app.extra_interceptors, delay]
        return app

    return serve_main(settings_cls, build)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
