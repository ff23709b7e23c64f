"""The three services as separate processes (``services.demo.stack.LocalStack``), each able to be killed,
terminated, restarted on its own port, slowed (``tests.support.faulty_service``) and measured (resident memory),
while the others keep running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.demo.stack import ORDER, LocalStack
from tests.support.faulty_service import DELAY_VARIABLE
from training.synthetic import REGIONS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: A log line worth showing when a fault test fails: a warning or worse, or a call answered with an error.
PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) | -> [A-Z_]+\b")


@dataclass
class FaultStack(LocalStack):
    """``delay_ms``: how long a slowed service holds each call (see :meth:`slow`)."""

    delay_ms: float = 300.0
    _base_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AISLE_")},
            **self.env,
            DELAY_VARIABLE: str(self.delay_ms),
        }

    def start_service(self, name: str, base_env: Mapping[str, str] | None = None) -> None:
        service = self.services[name]
        service.log_path.parent.mkdir(parents=True, exist_ok=True)
        with service.log_path.open("ab") as log:
            service.process = subprocess.Popen(
                [self.python, "-m", "tests.support.faulty_service", name],
                env={**self._base_env, **service.env},
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    # --- faults -----------------------------------------------------------------------------------------------
    def pid(self, name: str) -> int:
        process = self.services[name].process
        assert process is not None and process.poll() is None, f"{name} is not running"
        return process.pid

    def kill(self, name: str) -> None:
        """SIGKILL (a crash: no drain, no grace) and wait until the process is gone."""
        process = self.services[name].process
        process.kill()
        process.wait(10)

    def terminate(self, name: str) -> None:
        """SIGTERM (what Kubernetes sends); does not wait."""
        os.kill(self.pid(name), signal.SIGTERM)

    def slow(self, name: str, on: bool = True) -> None:
        """Holds every call to ``name`` for ``delay_ms`` (on) or not (off)."""
        os.kill(self.pid(name), signal.SIGUSR1 if on else signal.SIGUSR2)

    def restart(self, name: str, timeout: float = 60.0) -> float:
        """Starts ``name`` again on its old port; returns the seconds until it was SERVING."""
        began = time.monotonic()
        self.start_service(name)
        self.wait_serving(name, timeout)
        return time.monotonic() - began

    def running(self, name: str) -> bool:
        process = self.services[name].process
        return process is not None and process.poll() is None

    def ensure_running(self, timeout: float = 60.0) -> None:
        """Every service running, not slowed and SERVING (restarting any a previous test left down)."""
        for name in ORDER:
            if not self.running(name):
                self.start_service(name)
            else:
                self.slow(name, on=False)
        for name in ORDER:
            self.wait_serving(name, timeout)

    def health(self, name: str, timeout: float = 1.0) -> int | None:
        """The service's overall health status, or None when it does not answer."""
        with grpc.insecure_channel(self.services[name].target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.RpcError:
                return None
        return reply.status

    def log_offset(self, name: str) -> int:
        """How far ``name``'s log has been written: pass it to :meth:`first_problems` as ``since``."""
        path = self.services[name].log_path
        return path.stat().st_size if path.exists() else 0

    def first_problems(self, name: str, since: int = 0, limit: int = 6) -> str:
        """The first ``limit`` warnings, errors and failed calls in ``name``'s log from byte ``since`` on, as lines
        to add to an assertion message (where the outcomes alone cannot say why an answer was degraded)."""
        path = self.services[name].log_path
        if not path.exists():
            return ""
        with path.open("rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        found = [line[:400] for line in lines if PROBLEM.search(line)][:limit]
        return f"\n  first problems in {path}:" + "".join(f"\n    {line}" for line in found) if found else ""

    def rss_mib(self, name: str) -> float:
        """Resident memory of the service's process (VmRSS), in MiB."""
        return resident_mib(self.pid(name))


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def fault_stack(
    workdir: Path, trained_copy, *, drain_delay_s: float = 1.0, delay_ms: float = 300.0, **settings
) -> FaultStack:
    """A stack over ``trained_copy`` (an object with ``model_repository``, ``index_root``, ``root``) with fast
    model and index watches, a short drain on SIGTERM (1 s: the SIGTERM test's health watcher, polling every 20 ms,
    must see NOT_SERVING in it on a busy machine), and ``settings[service]`` merged over those."""
    base = {
        "retrieval": {"index_path": str(trained_copy.index_root), "index_poll_s": "0.2"},
        "ranking": {"model_repository": str(trained_copy.model_repository), "watch_interval_s": "0.2"},
        "gateway": {
            "catalog_path": str(trained_copy.root / "catalog.json"),
            "event_log": "off",
            "anonymous_cache_ttl_s": "0",
            "ranking_wait_s": "30",
            # As a deployment sets it: every region the requests name has a fallback list from start-up, so a
            # request whose region no answer has filled yet (exclusions keep theirs out) still gets one.
            "fallback_regions": ",".join(REGIONS),
        },
    }
    merged = {name: {"drain_delay_s": str(drain_delay_s), **base[name], **settings.get(name, {})} for name in ORDER}
    return FaultStack(workdir, merged, delay_ms=delay_ms)
