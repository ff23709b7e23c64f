"""A local, CPU-only Triton server (python backend, each model's configs/local.pbtxt), as `make triton` installs it:
started on free ports, waited for, and stopped. Shared by the Triton test fixture and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Where `make triton` (scripts/install_triton.sh) installs the server; AISLE_TRITON_HOME points elsewhere.
TRITON_HOME = Path(os.environ.get("AISLE_TRITON_HOME", PROJECT_ROOT / ".cache" / "triton"))
TRITON_LAUNCHER = TRITON_HOME / "bin" / "tritonserver"


def triton_missing() -> str | None:
    """Why a local Triton cannot start here (None when the installed server is there)."""
    if TRITON_LAUNCHER.is_file() and (TRITON_HOME / "installed").is_file():
        return None
    failed = TRITON_HOME / "install-failed"
    reason = failed.read_text().strip() if failed.is_file() else f"nothing at {TRITON_LAUNCHER}"
    return f"Triton server not installed ({reason}); run `make triton` (scripts/install_triton.sh)"


def local_triton_command(
    launcher: Path, repository: Path, models: Sequence[str], grpc_port: int, http_port: int, metrics_port: int
) -> list[str]:
    """Explicit model control, the local config, every endpoint on 127.0.0.1, no GPU metrics or pinned memory."""
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
    ]


@dataclass(frozen=True)
class TritonServer:
    grpc_target: str
    http_url: str
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def local_triton(
    repository: Path,
    log_path: Path,
    models: Sequence[str] = ("ranker",),
    launcher: Path = TRITON_LAUNCHER,
    timeout: float = 90,
) -> Iterator[TritonServer]:
    """Runs Triton on free local ports with ``models`` loaded; ready when entered, stopped on exit."""
    grpc_port, http_port, metrics_port = _free_ports(3)
    command = local_triton_command(launcher, repository, models, grpc_port, http_port, metrics_port)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = TritonServer(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log_path, process)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        stop_triton(process)


def stop_triton(process: subprocess.Popen) -> None:
    """SIGTERM (Triton stops its python backend stubs), then SIGKILL to the whole process group if it hangs."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the stubs, if any outlived the server
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _wait_ready(server: TritonServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Triton exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Triton not ready after {timeout:.0f} s:\n{server.log_tail()}")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (all held open together while choosing, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
