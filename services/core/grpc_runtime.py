"""How gRPC's C core runs in every Aisle process: set once, before ``grpc`` is imported.

grpcio 1.80 made EventEngine, gRPC's new I/O layer, the default for Python. On this project's request path (small
unary calls, one asyncio loop per process) its client and listener cost more CPU per call than the I/O layer it
replaces, which gRPC still ships behind its ``GRPC_EXPERIMENTS`` switches. With both turned off, an echo call
(bench/tracing.py) took 8-11 % less CPU on the server and 17-21 % less on the client (with and without spans):
about 0.2 ms over the six call ends of a request, 3 % of Aisle's CPU. End to end at 200 requests/s, in twelve pairs
of runs alternating with gRPC's defaults, the echo chain used a median 19 % less CPU per request and Aisle's four
processes 5 % less, within the machine's noise (docs/benchmarks.md, "gRPC's I/O layer"). Aisle's processes therefore
start with :data:`EXPERIMENTS` unless the environment says otherwise:

- ``GRPC_EXPERIMENTS`` already set wins, an empty value included (gRPC's own defaults, EventEngine on);
- only experiments gRPC knows are named: an unknown one is logged by gRPC at start-up and ignored, so a gRPC that
  has removed these switches runs its defaults. Measure again (``make bench-e2e``) when upgrading grpcio.

The variable is read when gRPC's core starts, so :func:`configure_grpc_runtime` must run before anything imports
``grpc``: the first lines of each service's ``__main__``, of the ``aisle`` command (services/cli.py), of the
benchmarks and of the tests' ``conftest.py``. tests/unit/test_grpc_runtime.py fails when grpcio no longer knows a
switch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

#: The environment variable gRPC's core reads its experiment switches from.
VARIABLE = "GRPC_EXPERIMENTS"
#: EventEngine's client and listener off: gRPC's earlier I/O layer serves and makes the calls.
EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def configure_grpc_runtime(
    environ: MutableMapping[str, str] | None = None, modules: Mapping[str, object] | None = None
) -> str:
    """Sets ``GRPC_EXPERIMENTS`` to :data:`EXPERIMENTS` unless the environment already sets it; returns the value
    in force ("" for gRPC's defaults). Once ``grpc`` is imported it is too late to set it: then it only logs a
    warning and leaves the environment alone (the process runs gRPC's defaults, and its start-up log says so)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if VARIABLE in environ:
        return environ[VARIABLE]
    if "grpc" in modules:
        log.warning(
            "grpc was imported before %s was set, so this process runs gRPC's default experiments: call "
            "configure_grpc_runtime() before anything imports grpc, or set %s=%s in the environment",
            VARIABLE,
            VARIABLE,
            EXPERIMENTS,
        )
        return ""
    environ[VARIABLE] = EXPERIMENTS
    return EXPERIMENTS


def grpc_runtime_in_force(environ: Mapping[str, str] | None = None) -> str:
    """What a process's start-up log says of its gRPC runtime."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "")
    return f"{VARIABLE}={value}" if value else "gRPC's default experiments"
