from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: services.core.bootstrap.EXIT_LOAD_FAILED and EXIT_BAD_SETTINGS (not imported here: importing it sets the thread
#: variables in this process)
EXIT_LOAD_FAILED = 3
EXIT_BAD_SETTINGS = 2
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_serving_processes_default_to_one_blas_thread_unless_told_otherwise():
    code = (
        "import sys, services.cli; assert 'numpy' not in sys.modules, 'numpy imported before the thread limits'; "
        "import services.core.bootstrap, os; print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.split() == ["1", "1"], result.stderr
    env["OMP_NUM_THREADS"] = "2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.split() == ["1", "2"], result.stderr


def test_event_loop_setting_picks_the_loop_and_names_the_fix_when_missing(monkeypatch):
    import pytest

    from services.core.bootstrap import loop_factory
    from services.core.settings import SettingsError

    assert loop_factory("asyncio") is None
    loop = loop_factory("uvloop")()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    with pytest.raises(SettingsError, match="pip install uvloop"):
        loop_factory("uvloop")


#: A service run by ``serve_main`` as ``aisle serve`` runs one; argv[1] picks what its load step does.
PROBE_SERVICE = """
import asyncio, os, signal, sys, time
from services.core.bootstrap import serve_main
from services.core.server import Application
from services.core.settings import ServiceSettings, settings_config
from services.ranking.model_config import ModelConfigError

class ProbeSettings(ServiceSettings):
    model_config = settings_config("AISLE_PROBE_")
    service_label = "probe"

def build(settings, registry):
    if sys.argv[1] == "sigterm-during-build":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # reading a large catalog before the server exists
    async def load():
        if sys.argv[1].startswith("sigterm-during-load"):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.to_thread(time.sleep, 60)  # a large model or index read: a thread nothing can interrupt
            print("load finished; watch started", flush=True)
        elif sys.argv[1] == "expected-failure":
            raise ModelConfigError("model_repository/ranker: no version folder with model.onnx")
        elif sys.argv[1] == "unexpected-failure":
            {}["a bug"]

    async def close():
        print("closed", flush=True)
        if sys.argv[1].endswith("close-fails"):
            raise OSError("the session store would not close")

    if sys.argv[1] == "close-fails":
        async def load():  # serves, then is told to stop
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)

    return Application([], lambda server: None, load, close)

sys.exit(serve_main(ProbeSettings, build))
"""


def run_probe(mode: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}
    environment.update({"AISLE_PROBE_PORT": "0", "AISLE_PROBE_METRICS_PORT": "none", **env})
    return subprocess.run(
        [sys.executable, "-c", PROBE_SERVICE, mode], capture_output=True, text=True, timeout=timeout, env=environment
    )


def test_sigterm_during_a_load_in_a_thread_exits_at_once_and_starts_nothing_after_close():
    started = time.monotonic()
    result = run_probe("sigterm-during-load", timeout=20)  # the load alone takes 60 s
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert result.stdout.split("\n")[:1] == ["closed"] and "watch started" not in result.stdout
    assert "stopped while loading" in result.stderr


def test_sigterm_before_the_server_exists_ends_the_process_at_once():
    # As PID 1 in a container a SIGTERM without a handler is ignored: the start-up must end on it by itself
    # (here, a process of its own, the default would kill it with -15 instead of exiting 143).
    started = time.monotonic()
    result = run_probe("sigterm-during-build", timeout=20)
    assert result.returncode == 143, (result.returncode, result.stderr)
    assert time.monotonic() - started < 15 and "stopped while starting (SIGTERM)" in result.stderr


def test_a_close_that_fails_still_ends_the_process_saying_why():
    """The stop waited for close, which raised: the stop never ended, the metrics port stayed open and further
    signals did nothing, until SIGKILL at the end of the pod's grace."""
    result = run_probe("close-fails", timeout=20)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "closing failed" in result.stderr and "the session store would not close" in result.stderr
    assert "probe stopped" in result.stderr


def test_a_close_that_fails_after_an_interrupted_load_is_not_an_exit_code_0():
    result = run_probe("sigterm-during-load-close-fails", timeout=20)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "the session store would not close" in result.stderr


def test_an_expected_load_failure_is_one_line_without_a_traceback():
    result = run_probe("expected-failure")
    assert result.returncode == EXIT_LOAD_FAILED
    assert "probe did not start: model_repository/ranker: no version folder with model.onnx" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_an_unexpected_load_failure_keeps_its_traceback():
    result = run_probe("unexpected-failure")
    assert result.returncode == EXIT_LOAD_FAILED
    assert "probe did not start: 'a bug'" in result.stderr
    assert "Traceback" in result.stderr and "KeyError" in result.stderr


def test_a_busy_metrics_port_names_its_setting_without_a_traceback():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_probe("expected-failure", AISLE_PROBE_METRICS_PORT=str(busy))
    assert result.returncode == EXIT_LOAD_FAILED
    assert (
        f"probe did not start: metrics port {busy} is in use: set AISLE_PROBE_METRICS_PORT / --metrics-port to a "
        "free port, 0 to pick one, or none to disable"
    ) in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_expected_failures_are_the_classes_aisle_raises_on_purpose():
    from services.core.errors import NotReady, is_expected_failure
    from services.core.settings import SettingsError
    from services.ranking.model_config import ModelConfigError
    from services.retrieval.index import InvalidIndex

    for error in (ModelConfigError("m"), InvalidIndex("i"), SettingsError("s"), NotReady("n")):
        assert is_expected_failure(error), error
    for error in (ValueError("v"), KeyError("k"), RuntimeError("r"), OSError("o")):
        assert not is_expected_failure(error), error


@pytest.mark.parametrize("service", ["retrieval", "ranking", "gateway"])
def test_python_m_lists_its_environment_settings_on_help_and_refuses_arguments_it_would_ignore(service):
    """The images run ``python -m services.<name>``, whose settings come from the environment only: a flag given
    as a container's args was silently ignored, and the service started on settings nobody meant."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    shown = run([sys.executable, "-m", f"services.{service}", "--help"])
    assert shown.returncode == 0, shown.stderr
    assert f"AISLE_{service.upper()}_PORT (default" in shown.stdout and f"aisle serve {service}" in shown.stdout
    refused = run([sys.executable, "-m", f"services.{service}", "--port", "1"])
    assert refused.returncode == EXIT_BAD_SETTINGS, refused.stderr
    assert f"takes no arguments (got --port 1): its settings come from AISLE_{service.upper()}_*" in refused.stderr
