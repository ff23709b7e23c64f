"""The command line of a local, CPU-only Triton server (python backend, the model's configs/local.pbtxt), as
`make triton` installs it: shared by the Triton test fixture and the ranking benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
