"""Starts retrieval, ranking and gateway as separate processes on free local ports, as production runs them.

Each process is configured only through its ``AISLE_<SERVICE>_*`` environment variables, logs to its own file,
and is stopped with SIGTERM (graceful shutdown), then SIGKILL if it overstays. With ``die_with_parent`` (what
``aisle demo`` uses) each service also gets SIGTERM from the kernel when the process that started it dies, however
it dies (``services/demo/child.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: Start order: the gateway waits for retrieval, so it goes last.
ORDER = ("retrieval", "ranking", "gateway")


class ServiceStartError(RuntimeError):
    """A service exited, or did not report SERVING in time, while the stack started."""

    def __init__(self, service: str, reason: str, log_path: Path, log_tail: str) -> None:
        super().__init__(f"{service} {reason}; see {log_path}:\n{log_tail}")
        self.service, self.reason, self.log_path, self.log_tail = service, reason, log_path, log_tail


class ServiceStartTimeout(ServiceStartError, TimeoutError):
    """The service kept running but never reported SERVING."""


@contextmanager
def signals_held(*signums: int) -> Iterator[None]:
    """Holds these signals' Python handlers while a child is being started, then delivers what arrived.

    ``Popen`` forks before it returns: a handler that raises (Ctrl-C, the demo's SIGTERM) inside it loses the new
    child's ``Popen``, so nothing stops that service. Held, the signal is raised again once the child is known.
    Only the main thread runs Python signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = {signum: signal.getsignal(signum) for signum in signums}
    held = {signum: handler for signum, handler in held.items() if handler is not None}  # None: not set from Python
    for signum in held:
        signal.signal(signum, lambda number, frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for signum in arrived:
            signal.raise_signal(signum)


def free_ports(count: int) -> list[int]:
    """Distinct free ports, all held open together while choosing: ports probed one after another could repeat
    (the kernel may hand a just-closed port out again), and two services would then fight for one."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class ServiceProcess:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalStack:
    """``settings[service]`` holds extra settings (without prefix, e.g. ``{"index_path": ...}``); ``env`` holds
    other variables every process gets (``OTEL_*``, for instance). ``die_with_parent``: each service stops (SIGTERM)
    when the thread that started it exits, on Linux; start the stack from a thread that outlives it."""

    workdir: Path
    settings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    die_with_parent: bool = False
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        chosen = iter(free_ports(2 * len(ORDER)))
        ports = {name: (next(chosen), next(chosen)) for name in ORDER}
        for name in ORDER:
            prefix = f"AISLE_{name.upper()}_"
            port, metrics_port = ports[name]
            values = {
                "port": str(port),
                "metrics_port": str(metrics_port),
                "grace_period_s": "5",
                **self.settings.get(name, {}),
            }
            if name == "gateway":
                values.setdefault("retrieval_target", f"127.0.0.1:{ports['retrieval'][0]}")
                values.setdefault("ranking_target", f"127.0.0.1:{ports['ranking'][0]}")
            env = {prefix + key.upper(): str(value) for key, value in values.items()}
            self.services[name] = ServiceProcess(name, port, metrics_port, self.workdir / "logs" / f"{name}.log", env)

    @property
    def gateway_target(self) -> str:
        return self.services["gateway"].target

    def start(self, timeout: float = 120.0, only: Collection[str] = ORDER) -> None:
        """Starts the services (``only`` some of them: retrieval and ranking for a gateway run elsewhere)."""
        if unknown := set(only) - set(ORDER):
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {', '.join(ORDER)}")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        base_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}, **self.env}
        dependencies = [name for name in ORDER[:-1] if name in only]
        try:
            # Dependencies first, in parallel; the gateway once they serve, as a rollout would order them.
            for name in dependencies:
                self.start_service(name, base_env)
            for name in dependencies:
                self.wait_serving(name, timeout)
            if ORDER[-1] in only:
                self.start_service(ORDER[-1], base_env)
                self.wait_serving(ORDER[-1], timeout)
        except BaseException:
            self.stop()
            raise

    def start_service(self, name: str, base_env: Mapping[str, str] | None = None) -> None:
        service = self.services[name]
        env = {**(base_env if base_env is not None else os.environ), **service.env}
        command = [self.python, "-m", f"services.{name}"]
        if self.die_with_parent:
            command = [self.python, "-m", "services.demo.child", str(os.getpid()), f"services.{name}"]
        with service.log_path.open("ab") as log, signals_held(signal.SIGTERM, signal.SIGINT):
            service.process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_serving(self, name: str, timeout: float) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(service.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if service.process is not None and service.process.poll() is not None:
                    reason = f"exited with code {service.process.returncode}"
                    raise ServiceStartError(name, reason, service.log_path, tail(service.log_path))
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    reason = f"not SERVING after {timeout:.0f}s"
                    raise ServiceStartTimeout(name, reason, service.log_path, tail(service.log_path))
                time.sleep(0.1)

    def stop_service(self, name: str, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        process = self.services[name].process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop(self) -> dict[str, int | None]:
        return {name: self.stop_service(name) for name in reversed(ORDER)}

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
