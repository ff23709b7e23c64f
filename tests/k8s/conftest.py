"""Renders the manifests once per run (scripts/k8s_check.sh: every overlay and component combination, validated
offline), or reads the renders `make k8s-check` already made (K8S_CHECK_RENDERS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.k8s.manifests import CHECK_SCRIPT, Render, load_render


@dataclass(frozen=True)
class CheckRun:
    returncode: int
    output: str
    renders: dict[str, Render]


def tool_path() -> str:
    """PATH with this interpreter's bin folder first, where the dev extra installs kubernetes-validate."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def missing_tools(path: str) -> list[str]:
    return [tool for tool in ("kubectl", "kubernetes-validate") if shutil.which(tool, path=path) is None]


def run_check(script: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), "--no-tests", "--out", str(out)],
        env={**os.environ, "PATH": tool_path()},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def k8s_check(tmp_path_factory: pytest.TempPathFactory) -> CheckRun:
    given = os.environ.get("K8S_CHECK_RENDERS")
    if given:
        out, returncode, output = Path(given), 0, f"renders and validation by make k8s-check in {given}"
    else:
        missing = missing_tools(tool_path())
        if missing:
            pytest.skip(
                f"{' and '.join(missing)} not found: the manifests cannot be rendered here "
                "(kubectl >= 1.27 with kustomize; kubernetes-validate comes with the dev extra)"
            )
        out = tmp_path_factory.mktemp("k8s-renders")
        result = run_check(CHECK_SCRIPT, out)
        returncode, output = result.returncode, result.stdout + result.stderr
    renders = {path.stem: load_render(path) for path in sorted(out.glob("*.yaml"))}
    return CheckRun(returncode, output, renders)


@pytest.fixture(scope="session")
def renders(k8s_check: CheckRun) -> list[Render]:
    assert k8s_check.renders, f"nothing rendered:\n{k8s_check.output}"
    return list(k8s_check.renders.values())
