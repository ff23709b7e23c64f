"""scripts/k8s_check.sh (make k8s-check) renders every overlay and component combination and validates every object
offline, and fails when an object is not valid Kubernetes or an overlay does not render."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from tests.k8s.conftest import CheckRun, missing_tools, run_check, tool_path
from tests.k8s.manifests import CHECK_SCRIPT, K8S

NEEDS_TRITON = {"autoscaling-triton"}


def expected_renders() -> set[str]:
    """Every overlay alone and with every non-empty subset of the components it does not already include
    (Triton-only components only where the overlay keeps Triton), named as the script names them."""
    components = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
    components = [c for c in components if c != "embedded-ranking"] + ["embedded-ranking"]
    names = set()
    for kustomization in sorted((K8S / "overlays").glob("*/kustomization.yaml")):
        overlay, text = kustomization.parent.name, kustomization.read_text()
        own = {c for c in components if f"components/{c}" in text}
        candidates = [c for c in components if c not in own]
        if "embedded-ranking" in own:
            candidates = [c for c in candidates if c not in NEEDS_TRITON]
        names.add(overlay)
        for size in range(1, len(candidates) + 1):
            names.update("+".join([overlay, *chosen]) for chosen in itertools.combinations(candidates, size))
    return names


def test_every_overlay_and_component_combination_renders_and_validates(k8s_check: CheckRun):
    assert k8s_check.returncode == 0, k8s_check.output
    assert set(k8s_check.renders) == expected_renders()
    assert {"cpu", "gpu"} <= set(k8s_check.renders)


@pytest.fixture
def checkable_copy(tmp_path: Path) -> Path:
    """A copy of the check script with the base and the gpu overlay only (one render: quick)."""
    missing = missing_tools(tool_path())
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: the check cannot run here")
    (tmp_path / "scripts").mkdir()
    shutil.copy(CHECK_SCRIPT, tmp_path / "scripts" / CHECK_SCRIPT.name)
    shutil.copytree(K8S / "base", tmp_path / "k8s" / "base")
    shutil.copytree(K8S / "overlays" / "gpu", tmp_path / "k8s" / "overlays" / "gpu")
    (tmp_path / "k8s" / "components").mkdir()
    return tmp_path


def test_the_check_passes_on_a_valid_copy(checkable_copy: Path):
    result = run_check(checkable_copy / "scripts" / CHECK_SCRIPT.name, checkable_copy / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (checkable_copy / "out").glob("*.yaml")] == ["gpu.yaml"]


def test_the_check_fails_on_an_object_kubernetes_would_reject(checkable_copy: Path):
    gateway = checkable_copy / "k8s" / "base" / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("  revisionHistoryLimit: 10\n", "  revisionHistoryLimits: 10\n", 1))
    result = run_check(checkable_copy / "scripts" / CHECK_SCRIPT.name, checkable_copy / "out")
    assert result.returncode != 0
    assert "revisionHistoryLimits" in result.stdout + result.stderr


def test_the_check_fails_when_an_overlay_does_not_render(checkable_copy: Path):
    overlay = checkable_copy / "k8s" / "overlays" / "gpu" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("  - path: triton-gpu.yaml", "  - path: missing.yaml"))
    result = run_check(checkable_copy / "scripts" / CHECK_SCRIPT.name, checkable_copy / "out")
    assert result.returncode != 0
    assert "FAILED to render gpu" in result.stderr
