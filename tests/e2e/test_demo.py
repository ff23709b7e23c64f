"""The whole stack as a user starts it: separate processes, configured by environment, stopped by SIGTERM."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.grpc_runtime import grpc_runtime_in_force
from services.demo.stack import LocalStack
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
            "gateway": {"catalog_path": str(trained.root / "catalog.json"), "event_log": "off", **loop},
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


def test_make_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "home page, signed-in customer with history" in out and "product page (similar items)" in out
    assert "INVALID_ARGUMENT: {'k':" in out
    assert "DEGRADED: DEGRADATION_REASON_RANKING_UNAVAILABLE" in out
    assert "guest after buying" in out and "tracked purchases of" in out
    assert "trace id " in out and "stages: retrieval" in out
    assert "exit codes {'gateway': 0, 'ranking': 0, 'retrieval': 0}" in out
