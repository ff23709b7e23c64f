"""What tracing costs per gRPC call: no tracing, opentelemetry-instrumentation-grpc's asyncio interceptors, and
Aisle's own spans (:mod:`services.core.rpc_tracing`), server and client in separate processes.

    .venv/bin/python bench/tracing.py [--calls 3000] [--repeats 5] [--concurrency 4]

Each variant serves a 600-byte echo method in a fresh server process (tracer provider with every span sampled and
no exporter, as in bench/e2e.py) and is called ``--calls`` times by this process, ``--concurrency`` calls in
flight; CPU per call comes from ``/proc`` (server) and ``time.process_time`` (client). The variants take turns,
``--repeats`` times, so a slow minute of the machine falls on all of them; the medians are written to
``bench/results/tracing.json``.

It also times one span in this process, every span sampled: ``start_as_current_span`` through the API's proxy (what
a module-level ``trace.get_tracer`` returns before the provider is set) and on the SDK's tracer, and the
``ActiveSpan`` Aisle's spans use (:mod:`services.core.telemetry`); ``--spans`` each, taking turns ``--repeats``
times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

import grpc  # noqa: E402

from bench.process_cpu import cpu_seconds  # noqa: E402
from services.demo.stack import free_port  # noqa: E402

METHOD = "/bench.Echo/Call"
VARIANTS = ("off", "instrumentation", "aisle")
PAYLOAD = b"x" * 600


def _identity(data: bytes) -> bytes:
    return data


def install_tracer_provider():
    """This process's SDK tracer provider (every span sampled, no exporter, as in bench/e2e.py); returns a tracer."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("bench")


def server_interceptors(variant: str) -> list:
    if variant == "instrumentation":
        from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor

        return [OpenTelemetryAioServerInterceptor(install_tracer_provider())]
    if variant == "aisle":
        install_tracer_provider()
        from services.core.rpc_tracing import TracingInterceptor

        return [TracingInterceptor()]
    return []


def channel(variant: str, target: str):
    if variant == "instrumentation":
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc._aio_client import UnaryUnaryAioClientInterceptor

        return grpc.aio.insecure_channel(target, interceptors=[UnaryUnaryAioClientInterceptor(trace.get_tracer("b"))])
    if variant == "aisle":
        from services.core.rpc_tracing import TracedChannel

        return TracedChannel(grpc.aio.insecure_channel(target))
    return grpc.aio.insecure_channel(target)


async def serve(port: int, variant: str) -> None:
    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server(interceptors=server_interceptors(variant))
    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


async def measure(variant: str, calls: int, concurrency: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "serve", str(port), variant])  # noqa: ASYNC220
    try:
        async with channel(variant, f"127.0.0.1:{port}") as chan:
            call = chan.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
            await asyncio.wait_for(chan.channel_ready(), 10)

            async def worker(count: int) -> None:
                for _ in range(count):
                    await call(PAYLOAD, timeout=5)

            await asyncio.gather(*(worker(100) for _ in range(concurrency)))  # warm-up
            server_before, client_before = cpu_seconds(server.pid), time.process_time()
            await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
            done = calls // concurrency * concurrency
            return {
                "server_us": (cpu_seconds(server.pid) - server_before) / done * 1e6,
                "client_us": (time.process_time() - client_before) / done * 1e6,
            }
    finally:
        server.terminate()
        server.wait(10)


def span_us(open_span: Callable[[], Any], spans: int) -> float:
    """CPU per ``with open_span():`` block, microseconds."""
    started = time.process_time()
    for _ in range(spans):
        with open_span():
            pass
    return (time.process_time() - started) / spans * 1e6


def span_figures(spans: int, repeats: int) -> dict:
    """Per span, in turns (the provider is already installed): ``start_as_current_span`` through the API's proxy
    and on the SDK's tracer, and Aisle's :class:`~services.core.telemetry.ActiveSpan` on the SDK's tracer."""
    from opentelemetry import trace

    from services.core.telemetry import ActiveSpan

    proxy, sdk = trace.ProxyTracer("bench"), trace.get_tracer("bench")
    variants: dict[str, Callable[[], Any]] = {
        "proxy": lambda: proxy.start_as_current_span("stage"),
        "sdk": lambda: sdk.start_as_current_span("stage"),
        "aisle": lambda: ActiveSpan(sdk.start_span("stage")),
    }
    for open_span in variants.values():
        span_us(open_span, 1000)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, open_span in variants.items():
            runs[name].append(round(span_us(open_span, spans), 1))
    print("per span: " + ", ".join(f"{name} {statistics.median(r):.1f} us" for name, r in runs.items()), flush=True)
    return {"medians": {name: round(statistics.median(r), 1) for name, r in runs.items()}, "runs": runs}


async def run(args: argparse.Namespace) -> dict:
    install_tracer_provider()  # the client side's, for both traced variants
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            row = await measure(variant, args.calls, args.concurrency)
            rows[variant].append(row)
            print(
                f"[{repeat + 1}/{args.repeats}] {variant:>15}: server {row['server_us']:.0f} us, "
                f"client {row['client_us']:.0f} us CPU per call",
                flush=True,
            )
    medians = {
        v: {side: round(statistics.median(r[side] for r in rows[v]), 1) for side in ("server_us", "client_us")}
        for v in VARIANTS
    }
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "medians": medians,
        "runs": rows,
        "span_us": span_figures(args.spans, args.repeats),
    }


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--spans", type=int, default=20000, help="spans per timing of one span in this process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tracing.json")
    args = parser.parse_args()
    if args.repeats < 1 or args.concurrency < 1 or args.spans < 1 or args.calls < args.concurrency:
        parser.error("--repeats, --concurrency and --spans must be at least 1, and --calls at least --concurrency")
    args.out.parent.mkdir(parents=True, exist_ok=True)  # before minutes of measuring, not after
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"per_call": result["medians"], "per_span_us": result["span_us"]["medians"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
