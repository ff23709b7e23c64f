"""The body of every service's ``__main__``: settings, logging, tracing, then run the host until SIGTERM."""

from __future__ import annotations

import os

# One thread per BLAS / OpenMP pool in a serving process: each service answers many small requests at once, and
# three services with a pool per core each oversubscribe the machine (measured: p50 252 ms -> 21 ms at 50
# requests/s in bench/e2e.py on 2 cores). Set before numpy or onnxruntime load; an operator's value wins.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from typing import Any, NoReturn, TypeVar  # noqa: E402

from prometheus_client import CollectorRegistry  # noqa: E402

from services.core.errors import is_expected_failure  # noqa: E402
from services.core.logs import configure_logging  # noqa: E402
from services.core.server import Application, ServiceHost  # noqa: E402
from services.core.settings import ServiceSettings, SettingsError, describe_settings, load_settings  # noqa: E402
from services.core.telemetry import configure_tracing, shutdown_tracing  # noqa: E402

S = TypeVar("S", bound=ServiceSettings)

#: Exit code for bad settings (the message names the setting).
EXIT_BAD_SETTINGS = 2
#: Exit code when the service could not load what it needs to answer.
EXIT_LOAD_FAILED = 3
#: The service stopped, but closing its application failed (a store or client that would not close).
EXIT_CLOSE_FAILED = 1


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a service runs on: asyncio's own, or uvloop (refused with the fix when not installed)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise SettingsError(
            "event_loop=uvloop needs the uvloop package (a dependency of aisle): pip install uvloop"
        ) from None
    return uvloop.new_event_loop


def serve_main(
    settings_cls: type[S],
    build: Callable[[S, CollectorRegistry], Application],
    overrides: Mapping[str, Any] | None = None,
    argv: Sequence[str] = (),
) -> int:
    """Runs a service until SIGTERM; returns the exit code. ``argv``: the command line of ``python -m
    services.<name>``, whose settings come from the environment only: ``--help`` lists them, anything else is
    refused (it would be ignored, and the service start on settings the caller did not mean)."""
    if argv:
        return _answer_arguments(settings_cls, list(argv))
    try:
        settings = load_settings(settings_cls, overrides)
        new_loop = loop_factory(settings.event_loop)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, settings.service_label)
    configure_tracing(f"aisle-{settings.service_label}")
    registry = CollectorRegistry()
    log = logging.getLogger(__name__)
    # Until the host takes SIGTERM over (a graceful stop), it ends the start-up: as PID 1 in a container a signal
    # without a handler is ignored, and the pod would wait out its grace period for SIGKILL.
    signal.signal(signal.SIGTERM, _exit_while_starting)
    try:
        host = ServiceHost(settings, build(settings, registry), registry, freeze_heap=True)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(host.run())
            if host.load_interrupted:
                _exit_without_the_load(settings.service_label, EXIT_CLOSE_FAILED if host.close_error else 0)
        if host.close_error is not None:  # stopped all the same (its traceback is in the log)
            return EXIT_CLOSE_FAILED
    except Exception as error:  # start-up failures end here, with the reason in the log
        if is_expected_failure(error):  # its message says what is wrong and where: one line
            log.error("%s did not start: %s", settings.service_label, error)
            log.debug("where it failed", exc_info=error)
        else:
            log.error("%s did not start: %s", settings.service_label, error, exc_info=error)
        return EXIT_LOAD_FAILED
    finally:
        shutdown_tracing()
    return 0


def _answer_arguments(settings_cls: type[ServiceSettings], argv: list[str]) -> int:
    label = settings_cls.service_label
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    if argv in (["--help"], ["-h"]):
        print(f"usage: python -m services.{label}\n\nRuns the {label} service; its settings come from the environment:")
        for variable, _flag, default, description in describe_settings(settings_cls):
            print(f"  {variable}" + (f" (default {default})" if default else "") + (f"\n      {description}"))
        print(f"\n`aisle serve {label}` takes the same settings as flags (`aisle serve {label} --help`).")
        return 0
    print(
        f"error: python -m services.{label} takes no arguments (got {' '.join(argv)}): its settings come from "
        f"{prefix}* environment variables (`python -m services.{label} --help` lists them); `aisle serve {label}` "
        "takes them as flags",
        file=sys.stderr,
    )
    return EXIT_BAD_SETTINGS


def _exit_while_starting(signum: int, frame: Any) -> NoReturn:
    logging.getLogger(__name__).info("stopped while starting (%s)", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


def _exit_without_the_load(label: str, code: int) -> NoReturn:
    """Ends the process now, after a stop interrupted the load. What the load handed to threads (a model or an
    index read in ``asyncio.to_thread``) cannot be interrupted, and both the event loop's close and the interpreter's
    exit wait for those threads: a SIGTERM would otherwise take as long as the load."""
    logging.getLogger(__name__).info("%s exits without waiting for the interrupted load", label)
    shutdown_tracing()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
