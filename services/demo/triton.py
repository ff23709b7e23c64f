"""A local, CPU-only Triton server (python backend, each model's configs/local.pbtxt), as `make triton` installs it:
started on free ports, waited for, and stopped. Shared by the Triton test fixture and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from services.core.grpc_runtime import VARIABLE as GRPC_VARIABLE
from services.core.keepalive import MIN_CLIENT_PING_INTERVAL_MS
from services.demo.stack import free_ports, signals_held

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Where `make triton` (scripts/install_triton.sh) installs the server; AISLE_TRITON_HOME points elsewhere.
TRITON_HOME = Path(os.environ.get("AISLE_TRITON_HOME", PROJECT_ROOT / ".cache" / "triton"))
TRITON_LAUNCHER = TRITON_HOME / "bin" / "tritonserver"
#: Where the python backend keeps the shared-memory regions it talks to its model stubs through.
SHM_DIR = Path("/dev/shm")


def triton_missing() -> str | None:
    """Why a local Triton cannot start here (None when the installed server is there)."""
    if TRITON_LAUNCHER.is_file() and (TRITON_HOME / "installed").is_file():
        return None
    failed = TRITON_HOME / "install-failed"
    reason = failed.read_text().strip() if failed.is_file() else f"nothing at {TRITON_LAUNCHER}"
    return f"Triton server not installed ({reason}); run `make triton` (scripts/install_triton.sh)"


def local_triton_command(
    launcher: Path,
    repository: Path,
    models: Sequence[str],
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    shm_prefix: str | None = None,
) -> list[str]:
    """Explicit model control, the local config, every endpoint on 127.0.0.1, no GPU metrics or pinned memory; the
    python backend's shared-memory regions named with ``shm_prefix`` when given."""
    return [
        str(launcher),
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        *[f"--load-model={model}" for model in models],
        "--model-config-name=local",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=5",
        # Accept the ranking client's keepalive pings on idle connections (as k8s/base/triton.yaml does).
        "--grpc-keepalive-permit-without-calls=1",
        f"--grpc-http2-min-recv-ping-interval-without-data={MIN_CLIENT_PING_INTERVAL_MS}",
        *([f"--backend-config=python,shm-region-prefix-name={shm_prefix}"] if shm_prefix else []),
    ]


class LocalTriton:
    """One local Triton server on free ports that stay its own across restarts (so clients reconnect to it).

    Its python backend names its shared-memory regions (1 MiB each, in :data:`SHM_DIR`) with a prefix of this
    server's own, and they are removed once the server has exited: Triton removes them itself on a clean stop, but a
    SIGKILLed server (:meth:`kill`, or :meth:`stop` when SIGTERM was not enough) left them behind, one more per kill.
    """

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        models: Sequence[str] = ("ranker",),
        launcher: Path = TRITON_LAUNCHER,
    ):
        self.repository, self.log_path, self.models, self.launcher = repository, log_path, tuple(models), launcher
        self.grpc_port, self.http_port, self.metrics_port = free_ports(3)
        self.shm_prefix = f"aisle_triton_{secrets.token_hex(6)}_"
        self.process: subprocess.Popen | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shm_regions(self) -> list[Path]:
        """The shared-memory regions of this server's python backend now in :data:`SHM_DIR`."""
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def _remove_shm_regions(self) -> None:
        """Once the server has exited (a stub still mapping one keeps it until it exits too)."""
        for region in self.shm_regions():
            region.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = 90) -> float:
        """Starts it with ``models`` loaded and waits until ready; returns the seconds that took."""
        began = time.monotonic()
        command = local_triton_command(
            self.launcher,
            self.repository,
            self.models,
            self.grpc_port,
            self.http_port,
            self.metrics_port,
            self.shm_prefix,
        )
        # Triton's own gRPC reads GRPC_EXPERIMENTS too: the Aisle process that starts it must not pass its runtime on
        # (services/core/grpc_runtime.py), so the local server runs as the Triton container does.
        env = {key: value for key, value in os.environ.items() if key != GRPC_VARIABLE}
        with open(self.log_path, "ab") as log, signals_held(signal.SIGTERM, signal.SIGINT):
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"Triton exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return time.monotonic() - began
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Triton not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (Triton stops its python backend stubs), then SIGKILL to the whole group if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the stubs, if any outlived the server
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        if process.poll() is not None:
            self._remove_shm_regions()

    def kill(self) -> None:
        """SIGKILL to Triton and its python backend stubs: it stops at once, mid-call."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self._remove_shm_regions()


@contextlib.contextmanager
def local_triton(
    repository: Path,
    log_path: Path,
    models: Sequence[str] = ("ranker",),
    launcher: Path = TRITON_LAUNCHER,
    timeout: float = 90,
) -> Iterator[LocalTriton]:
    """Runs Triton on free local ports with ``models`` loaded; ready when entered, stopped on exit."""
    server = LocalTriton(repository, log_path, models, launcher)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()
