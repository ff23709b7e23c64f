"""A bare grpc.aio echo chain with the same hops as Aisle (front -> two back ends), as a latency baseline.

    python bench/echo_chain.py front PORT BACKEND1 BACKEND2   # forwards each call to both back ends in turn
    python bench/echo_chain.py back PORT                      # answers at once

Generic byte-level handlers: no protobuf work, no business logic, so the difference to Aisle at the same rate is
the cost of Aisle's own work per hop. Started by bench/e2e.py, it inherits the benchmark's environment, so it runs
the same gRPC runtime (``GRPC_EXPERIMENTS``) as the services it is compared with.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

METHOD = "/bench.Echo/Call"


def _identity(data: bytes) -> bytes:
    return data


class Back(grpc.GenericRpcHandler):
    def service(self, details):
        async def echo(request: bytes, context) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)


class Front(grpc.GenericRpcHandler):
    def __init__(self, calls):
        self.calls = calls

    def service(self, details):
        async def forward(request: bytes, context) -> bytes:
            first = await self.calls[0](request, timeout=1)
            await self.calls[1](first, timeout=1)
            return first

        return grpc.unary_unary_rpc_method_handler(
            forward, request_deserializer=_identity, response_serializer=_identity
        )


async def serve(role: str, port: int, backends: list[str]) -> None:
    server = grpc.aio.server()
    if role == "front":
        channels = [grpc.aio.insecure_channel(target) for target in backends]
        calls = [c.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity) for c in channels]
        server.add_generic_rpc_handlers([Front(calls)])
    else:
        server.add_generic_rpc_handlers([Back()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
