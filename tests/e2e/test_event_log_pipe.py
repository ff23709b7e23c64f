"""The gateway's event log on a pipe, as Kubernetes runs it (``AISLE_GATEWAY_EVENT_LOG_PATH=/dev/stdout``, which a
container runtime connects to its log agent through a pipe): tracked events arrive as JSON lines, and TrackEvents
is answered. Here the pipe is a named one the test reads, the gateway a process of its own."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest

from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.demo.stack import LocalStack
from tests.integration.test_events_and_consent import tracked

pytestmark = pytest.mark.e2e


def read_lines(reader: int, wanted: int, within_s: float = 10.0) -> list[str]:
    data, deadline = b"", time.monotonic() + within_s
    while data.count(b"\n") < wanted and time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 65536)
        except BlockingIOError:  # a writer has the pipe open, with nothing written yet
            chunk = b""
        data += chunk
        if not chunk:  # nothing yet, or no writer between the gateway's batches: wait, not spin
            time.sleep(0.05)
    return data.decode().splitlines()


def test_tracked_events_reach_a_pipe_and_the_call_is_answered(trained, tmp_path):
    pipe = tmp_path / "stdout"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # the log agent's end, open before the gateway's
    item = trained.item_ids[0]
    try:
        stack = LocalStack(
            tmp_path,
            {
                "retrieval": {"index_path": str(trained.index_root)},
                "ranking": {"model_repository": str(trained.model_repository)},
                "gateway": {"catalog_path": str(trained.root / "catalog.json"), "event_log_path": str(pipe)},
            },
        )
        with stack, grpc.insecure_channel(stack.gateway_target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            for _ in range(3):
                reply = stub.TrackEvents(pb.TrackEventsRequest(events=[tracked(item)]), timeout=5)
                assert (reply.accepted_count, reply.rejected_count) == (1, 0)
            lines = read_lines(reader, wanted=3)
    finally:
        os.close(reader)
    records = [json.loads(line) for line in lines]
    assert [(r["type"], r["item_id"]) for r in records] == [("purchase", item)] * 3
