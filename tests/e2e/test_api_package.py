"""The aisle-api wheel (scripts/build_api_wheel.sh): the stubs alone, answering a caller that has neither the
servers' code nor their dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from services.demo.stack import LocalStack
from tests.integration.conftest import FUNCTIONAL_BUDGET_MS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(out: Path) -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_api_wheel.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def test_the_wheel_holds_the_stubs_and_asks_for_grpcio_and_protobuf_only(tmp_path):
    wheel = build_wheel(tmp_path)
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert wheel.name == f"aisle_api-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"aisle_api-{version}.dist-info/METADATA").decode()
    code = [name for name in names if ".dist-info/" not in name]
    # Every generated file of gen/python, nothing else (no services, no training, no caches).
    generated = sorted(
        str(p.relative_to(ROOT / "gen" / "python"))
        for p in (ROOT / "gen" / "python" / "aisle").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(code) == generated
    assert "aisle/recommendation/v1/recommendation_service_pb2_grpc.py" in code and "aisle/py.typed" in code
    required = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert sorted(r for r in required if "extra ==" not in r) == ["grpcio>=1.81.1", "protobuf<7,>=6.33.5"]


def test_a_caller_with_only_the_api_wheel_runs_the_readmes_call(trained, tmp_path):
    """The README's client snippet, run by an interpreter that sees the wheel's files and grpcio and protobuf (the
    servers' environment's copies), without the servers' code or any of their other packages' set-up."""
    wheel = build_wheel(tmp_path / "dist")
    target = tmp_path / "caller"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
    )
    snippet = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    stack = LocalStack(
        tmp_path / "stack",
        {
            "retrieval": {"index_path": str(trained.index_root)},
            "ranking": {"model_repository": str(trained.model_repository)},
            "gateway": {
                "catalog_path": str(trained.root / "catalog.json"),
                "event_log": "off",
                "total_budget_ms": str(FUNCTIONAL_BUDGET_MS),
            },
        },
    )
    with stack:
        caller = (
            "import sys\n"
            # The installed wheel first, then the servers' site-packages as a plain folder: its .pth files (the
            # editable install that maps `services`, `training` and gen/python's `aisle`) are not read.
            f"sys.path[:0] = [{str(target)!r}, {sysconfig.get_paths()['purelib']!r}]\n"
            + snippet.replace("gateway.aisle.svc:50060", stack.gateway_target)
            + "import aisle, importlib.util\n"
            "print(len(response.items), aisle.__file__, importlib.util.find_spec('services'))\n"
        )
        # -I -S: no site set-up, no environment, no user folder: only what sys.path above names.
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", caller], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
    assert result.returncode == 0, result.stderr
    count, where, services = result.stdout.split()
    assert int(count) == 10
    assert Path(where).is_relative_to(target) and services == "None"
