"""The whole stack as a user starts it: separate processes, configured by environment, stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.grpc_runtime import grpc_runtime_in_force
from services.demo.run import MARKER
from services.demo.stack import LocalStack
from tests.integration.conftest import FUNCTIONAL_BUDGET_MS
from tests.integration.requests import home_request

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_processes_answer_and_stop_cleanly(trained, tmp_path, event_loop):
    loop = {"event_loop": event_loop}
    stack = LocalStack(
        tmp_path,
        {
            "retrieval": {"index_path": str(trained.index_root), **loop},
            "ranking": {"model_repository": str(trained.model_repository), **loop},
            "gateway": {
                "catalog_path": str(trained.root / "catalog.json"),
                "event_log": "off",
                "total_budget_ms": str(FUNCTIONAL_BUDGET_MS),  # a clean answer, whatever the machine's minute
                **loop,
            },
        },
    )
    with stack:
        history = [trained.item_ids[row] for row in max(trained.sequences, key=len)[-5:]]
        with grpc.insecure_channel(stack.gateway_target) as channel:
            response = pb_grpc.RecommendationServiceStub(channel).Recommend(home_request(history, k=8), timeout=2)
        assert len(response.items) == 8 and not response.degradations
        metrics_port = stack.services["gateway"].metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'aisle_gateway_stage_seconds_count{stage="scoring"} 1.0' in body
        assert 'aisle_gateway_component_seconds_count{component="RankingScorer",policy="home"} 1.0' in body
        # The client call README.md shows works as written (pointed at this stack's gateway).
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
        snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
        scope: dict = {}
        exec(snippet.replace("gateway.aisle.svc:50060", stack.gateway_target), scope)
        assert len(scope["response"].items) == 10
    codes = {name: service.process.returncode for name, service in stack.services.items()}
    assert codes == {"retrieval": 0, "ranking": 0, "gateway": 0}
    for name in codes:
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert "shutting down" in log and f"{event_loop} event loop" in log
        assert grpc_runtime_in_force() in log  # the gRPC runtime this test process runs, passed on


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`aisle demo` run once, as `make demo` runs it; the tests below reuse the workdir it leaves."""
    workdir = tmp_path_factory.mktemp("demo-run") / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return workdir, result


def test_make_demo_runs_end_to_end(demo_run):
    workdir, result = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "home page, signed-in customer with history" in out and "product page (similar items)" in out
    assert "INVALID_ARGUMENT: {'k':" in out
    assert "DEGRADED: DEGRADATION_REASON_RANKING_UNAVAILABLE" in out
    assert "guest after buying" in out and "tracked purchases of" in out
    assert "trace id " in out and "stages: retrieval" in out
    assert "exit codes {'gateway': 0, 'ranking': 0, 'retrieval': 0}" in out
    assert (workdir / MARKER).is_file()  # the workdir is the demo's: the next run may replace its models


def reusable_copy(demo_run, tmp_path: Path) -> Path:
    workdir, result = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    copy = tmp_path / "demo"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("logs", "events"))
    return copy


class DemoProcess:
    """`aisle demo` as a child process whose output is read line by line while it runs. Used as a context
    manager: on the way out, whatever the test's outcome, the demo (stopped or not) and the services it started are
    killed if still running."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output: list[str] = []
        #: The demo's service processes, once seen (after the demo exits they are no longer its children).
        self.services: list[int] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def __enter__(self) -> DemoProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL (which ends a SIGSTOPped process too) the services, then the demo, where still running."""
        pids = set(self.services)
        if self.process.poll() is None:
            pids.update(children(self.process.pid))
        for pid in filter(a_service, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(line)
            if text in line:
                return
        self.process.kill()
        pytest.fail(f"no {text!r} in the demo's output:\n" + "".join(self.output)[-3000:])

    def rest(self, timeout: float = 60) -> str:
        self.process.wait(timeout)
        while (line := self._lines.get(timeout=10)) is not None:
            self.output.append(line)
        return "".join(self.output)


def children(pid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap what it inherits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def a_service(pid: int) -> bool:
    """Still running and an Aisle service (not another process that reused a recorded id)."""
    try:
        return running(pid) and b"services." in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def services_of_a_serving_demo(demo: DemoProcess) -> list[int]:
    """Waits until the demo has started its three services, then freezes it (SIGSTOP) so that it cannot finish on its
    own before the test's signal arrives: as soon as the third (the gateway) exists, while the demo still waits for it
    to be SERVING. (Freezing it once it had printed them raced with its requests on a busy machine: it could finish
    first.) Returns the service processes' ids."""
    demo.wait_for("== starting retrieval")
    deadline = time.monotonic() + 120
    while len(children(demo.process.pid)) < 3:
        assert demo.process.poll() is None and time.monotonic() < deadline, "the demo never started three services"
        time.sleep(0.02)
    os.kill(demo.process.pid, signal.SIGSTOP)
    services = demo.services = children(demo.process.pid)
    assert len(services) == 3, services
    return services


def still_running(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (alive := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)  # leave nothing behind, then fail
    return alive


def test_sigterm_stops_the_demo_and_its_services(demo_run, tmp_path):
    """`timeout`, `kill`, CI timeouts and supervisors send SIGTERM: the demo stops its services, then exits 143."""
    with DemoProcess("--workdir", str(reusable_copy(demo_run, tmp_path)), "--reuse") as demo:
        services = services_of_a_serving_demo(demo)

        os.kill(demo.process.pid, signal.SIGTERM)
        os.kill(demo.process.pid, signal.SIGCONT)
        output = demo.rest()

        assert demo.process.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert "Traceback" not in output and "stopped by SIGTERM" in output
        assert still_running(services, within=0) == []  # stopped before the demo exited


def test_services_die_with_a_killed_demo(demo_run, tmp_path):
    """SIGKILL leaves the demo no chance to stop anything: the services stop themselves (parent-death signal)."""
    with DemoProcess("--workdir", str(reusable_copy(demo_run, tmp_path)), "--reuse") as demo:
        services = services_of_a_serving_demo(demo)

        os.kill(demo.process.pid, signal.SIGKILL)
        demo.rest()

        assert still_running(services, within=30) == []


def test_a_service_that_cannot_start_is_a_one_line_error_with_its_log(demo_run, tmp_path):
    workdir = reusable_copy(demo_run, tmp_path)
    for model in (workdir / "model_repository").glob("ranker/*/model.onnx"):
        model.write_bytes(b"not an onnx model")

    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--workdir", str(workdir), "--reuse"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    headline, *tail = result.stderr.splitlines()
    assert headline.startswith("Error: ranking did not start") and "without --reuse" in headline, headline
    assert str(workdir / "logs" / "ranking.log") in headline
    assert tail and tail[-1] in (workdir / "logs" / "ranking.log").read_text()
