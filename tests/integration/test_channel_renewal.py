"""A long-lived channel whose name did not resolve for a while (a headless Service with no Ready pod, a StatefulSet
pod restarting) uses the server soon after the name resolves again, not after gRPC's lookup backoff (up to two
minutes). The name server is a real one on 127.0.0.1 that answers NXDOMAIN until it is told otherwise."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.channels import RenewingChannel, create_channel
from services.core.server import Application, ServiceHost
from services.ranking.settings import RankingSettings


class NameServer:
    """Answers every A query for any name with 127.0.0.1 once ``resolvable``, NXDOMAIN before; counts queries."""

    def __init__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.resolvable, self.queries, self._stopped = False, 0, False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                data, sender = self.socket.recvfrom(512)
            except TimeoutError:
                continue
            self.queries += 1
            end = 12
            while data[end]:
                end += 1 + data[end]
            question, query_type = data[12 : end + 5], struct.unpack(">H", data[end + 1 : end + 3])[0]
            header = struct.pack(">H", struct.unpack(">H", data[:2])[0])
            if not self.resolvable:
                self.socket.sendto(header + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + question, sender)
            elif query_type == 1:  # A: 127.0.0.1, for 5 s
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
                self.socket.sendto(header + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question + answer, sender)
            else:  # AAAA and the rest: the name exists, with no such record
                self.socket.sendto(header + struct.pack(">HHHHH", 0x8180, 1, 0, 0, 0) + question, sender)

    def close(self) -> None:
        self._stopped = True
        self._thread.join()
        self.socket.close()


async def test_a_channel_whose_name_did_not_resolve_is_made_anew_and_serves_soon_after_it_does():
    names = NameServer()
    host = ServiceHost(
        RankingSettings(host="127.0.0.1", port=0, metrics_port=None),
        Application(service_names=[], register=lambda server: None),
    )
    port = await host.start()
    await host.load()  # no application: SERVING at once
    target = f"dns://127.0.0.1:{names.port}/ranking.aisle.test:{port}"
    channel = RenewingChannel(lambda: create_channel(target, []), renew_after_s=1.0, check_every_s=0.2)
    stub = health_pb2_grpc.HealthStub(channel)  # made once, as a service makes its stubs: it follows each renewal

    async def serving() -> bool:
        try:
            return (
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            ).status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            return False

    try:
        # Ten seconds unresolvable: gRPC's lookups back off to about 6 s apart by then (1, 1.6, 2.6, 4.1, 6.6 s).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert not await serving()
            await asyncio.sleep(0.2)
        names.resolvable = True
        resolvable_at = time.monotonic()
        for _ in range(400):  # 20 s at most
            if await serving():
                break
            await asyncio.sleep(0.05)
        late_s = time.monotonic() - resolvable_at
    finally:
        await channel.close()
        await host.stop(grace=0, drain=0)
        names.close()
    assert channel.renewals >= 3, channel.renewals
    # Within a renewal (1 s) and the check (0.2 s) of the name resolving; the first channel alone would have
    # waited for its next lookup, 2-7 s away (checked when this test was written: 3.9 s).
    assert late_s < 2.0, late_s


async def test_calls_on_a_replaced_channel_end_with_their_status_not_cancelled():
    # A dependency that refuses connections: calls fail UNAVAILABLE while the channel is made anew again and again.
    # One still waiting on the old channel (for a pick, between retries) must fail the same way: a cancelled call
    # raises CancelledError in its caller, which ends a shard router's whole answer or a background task.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: refused
    channel = RenewingChannel(lambda: create_channel(f"127.0.0.1:{port}", ["test.Svc"]), 0.2, check_every_s=0.05)
    call = channel.unary_unary("/test.Svc/Get")  # taken once, as a stub takes it
    outcomes: list[str] = []
    until = time.monotonic() + 4

    async def caller() -> None:
        while time.monotonic() < until:
            try:
                await call(b"", timeout=1.0)
                outcomes.append("answered")
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                outcomes.append("cancelled")
            await asyncio.sleep(0.002)

    try:
        await asyncio.gather(*(caller() for _ in range(20)))
    finally:
        await channel.close()
    assert channel.renewals >= 5, channel.renewals
    assert set(outcomes) == {"UNAVAILABLE"}, {o: outcomes.count(o) for o in set(outcomes)}
