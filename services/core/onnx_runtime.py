"""Which ONNX Runtime build is installed: exactly one of ``aisle[cpu]`` (onnxruntime) or ``aisle[gpu]``
(onnxruntime-gpu) must be. Both install the same ``onnxruntime/`` folder, so with both present the last one
installed silently wins and removing either breaks the other; pip does not notice. Checked at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

CPU_DISTRIBUTION = "onnxruntime"
GPU_DISTRIBUTION = "onnxruntime-gpu"


class OnnxRuntimeInstallError(RuntimeError):
    pass


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_onnxruntime_install(version_of: Callable[[str], str | None] = _installed_version) -> str:
    """Returns the installed distribution's name; raises :class:`OnnxRuntimeInstallError` with the fix."""
    cpu, gpu = version_of(CPU_DISTRIBUTION), version_of(GPU_DISTRIBUTION)
    if cpu and gpu:
        raise OnnxRuntimeInstallError(
            f"both {CPU_DISTRIBUTION} {cpu} and {GPU_DISTRIBUTION} {gpu} are installed; they overwrite each other. "
            f"Fix: pip uninstall -y {CPU_DISTRIBUTION} {GPU_DISTRIBUTION}, then pip install 'aisle[cpu]' "
            "(or 'aisle[gpu]' on GPU machines)"
        )
    if not cpu and not gpu:
        raise OnnxRuntimeInstallError(
            "no ONNX Runtime is installed. Fix: pip install 'aisle[cpu]' (or 'aisle[gpu]' on GPU machines)"
        )
    return CPU_DISTRIBUTION if cpu else GPU_DISTRIBUTION
