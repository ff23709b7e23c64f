"""Ranking benchmark: the Rank RPC on embedded ONNX Runtime (inline, micro-batched, unbatched) and on a local Triton,
with torch eager as the reference, plus ONNX export vs torch parity.

    .venv/bin/python bench/ranking.py [--quick] [--seconds 5] [--out bench/results/ranking.json]
    (make bench-ranking runs it at full size)
    .venv/bin/python bench/ranking.py --candidates 500 --configs embedded_inline,embedded_batched,embedded_unbatched \
        --no-model-only --seconds 3 --open-seconds 8 --out /tmp/ranking.json   # a quick before/after check

The model is the project's sequence ranker (``training.tiny_ranker.TinySequenceRanker``, d=64, 2 layers, history
50) over 5,000 items, randomly initialised: latency does not depend on the weights. It is exported to ONNX into a
temporary copy of ``model_repository/ranker`` (GPU config + local config).

Each server runs as its own process, one configuration at a time, and the load comes from this process over gRPC
(``grpc.aio``), as callers would send it:

- closed loop: ``concurrency`` callers each sending the next request when the previous answer arrives, for
  ``--seconds``: p50/p99 latency and throughput, for 100/500/1000 candidates x concurrency 1/8/32;
- open loop: 100 requests/s of 500 candidates for ``--seconds`` (latency measured from each request's scheduled send
  time, so a slow server cannot hide its queueing): the p99 targets.

Configurations:

- ``embedded_inline``: the service defaults on a CPU (micro-batching with no queue delay and one inference
  instance, where a request that finds nothing queued runs on the event loop's thread: in practice no batches);
- ``embedded_batched``: micro-batching proper (as above, but every batch runs in the inference thread, so what
  queues while one runs leaves as the next batch; ``AISLE_RANKING_INLINE_MAX_CANDIDATES=0``);
- ``embedded_unbatched``: one ``session.run`` per request on two inference threads (its best case on two cores);
- ``embedded_batched_delay500``: micro-batching with config.pbtxt's 500 us queue delay (500 candidates only);
- ``triton``: the ranking service's triton backend -> Triton 2.51 (python backend running the same model.onnx with
  ONNX Runtime, dynamic batching; needs ``make triton``);
- ``torch_eager``: the torch module called in-process, no RPC: the reference cost of the model itself.

Writes bench/results/ranking.json: every measured row and ``{"summary": {"microbatch_throughput_ratio_c32",
"embedded_p99_ms_500", "triton_p99_ms_500", ...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

import grpc  # noqa: E402

from aisle.common.v1 import common_pb2  # noqa: E402
from aisle.ranking.v1 import ranking_service_pb2 as pb  # noqa: E402
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc  # noqa: E402
from services.demo.stack import free_port  # noqa: E402
from services.demo.triton import local_triton, triton_missing  # noqa: E402

CANDIDATES = (100, 500, 1000)
CONCURRENCY = (1, 8, 32)
OPEN_LOOP_RATE = 100.0
ITEMS = 5000
HISTORY = 50
CONFIGS = ("embedded_inline", "embedded_batched", "embedded_unbatched", "embedded_batched_delay500", "triton")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- the model ---------------------------------------------------------------------------------------------------
def build_model(repository: Path):
    """Exports a d=64, 2-layer TinySequenceRanker into ``repository/ranker/1``; returns (module, item ids, parity)."""
    import onnxruntime as ort
    import torch

    from training.tiny_ranker import TinySequenceRanker

    torch.manual_seed(0)
    module = TinySequenceRanker(ITEMS, dim=64, history_length=HISTORY, layers=2).eval()
    model_dir = repository / "ranker"
    model_dir.mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "ranker" / "config.pbtxt", model_dir)
    shutil.copytree(ROOT / "model_repository" / "ranker" / "configs", model_dir / "configs")
    version = model_dir / "1"
    version.mkdir()
    history = torch.zeros(2, HISTORY, dtype=torch.int64)
    candidates = torch.ones(2, 8, dtype=torch.int64)
    batch, count = torch.export.Dim("batch"), torch.export.Dim("candidates")
    for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (history, candidates),
            str(version / "model.onnx"),
            input_names=["history_item_ids", "candidate_item_ids"],
            output_names=["purchase_probability"],
            dynamic_shapes={"history_item_ids": {0: batch}, "candidate_item_ids": {0: batch, 1: count}},
            dynamo=True,
            opset_version=18,
            external_data=False,
            verbose=False,
        )
    item_ids = [f"sku-{i:05d}" for i in range(ITEMS)]
    (version / "item_vocabulary.txt").write_text("\n".join(item_ids) + "\n")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    parity = {}
    for count_ in CANDIDATES:
        h = rng.integers(0, ITEMS + 1, size=(4, HISTORY), dtype=np.int64)
        c = rng.integers(1, ITEMS + 1, size=(4, count_), dtype=np.int64)
        got = session.run(["purchase_probability"], {"history_item_ids": h, "candidate_item_ids": c})[0]
        with torch.no_grad():
            want = module(torch.from_numpy(h), torch.from_numpy(c)).numpy()
        parity[str(count_)] = float(np.abs(got - want).max())
    return module, item_ids, parity


def torch_eager(module, seconds: float) -> list[dict]:
    """The model called in-process from torch (no RPC, one thread): the reference cost per request."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    rows = []
    for count in CANDIDATES:
        for batch in (1, 32):
            h = torch.from_numpy(rng.integers(0, ITEMS + 1, size=(batch, HISTORY), dtype=np.int64))
            c = torch.from_numpy(rng.integers(1, ITEMS + 1, size=(batch, count), dtype=np.int64))
            times = []
            with torch.no_grad():
                module(h, c)
                end = time.perf_counter() + seconds / 4
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    module(h, c)
                    times.append(time.perf_counter() - started)
            rows.append(
                {
                    "backend": "torch_eager",
                    "candidates": count,
                    "batch": batch,
                    "calls": len(times),
                    "p50_ms": percentile(times, 50) * 1000,
                    "p99_ms": percentile(times, 99) * 1000,
                    "users_per_s": batch * len(times) / sum(times),
                }
            )
            log(f"torch eager C={count} B={batch}: p50 {rows[-1]['p50_ms']:.2f} ms")
    return rows


def ort_model_only(repository: Path, seconds: float) -> list[dict]:
    """``session.run`` in-process (one thread) per batch size: how much batching can save on the model alone."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(
        str(repository / "ranker" / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(3)
    rows = []
    for count in CANDIDATES:
        for batch in (1, 8, 32):
            feed = {
                "history_item_ids": rng.integers(0, ITEMS + 1, size=(batch, HISTORY), dtype=np.int64),
                "candidate_item_ids": rng.integers(1, ITEMS + 1, size=(batch, count), dtype=np.int64),
            }
            session.run(None, feed)
            times = []
            end = time.perf_counter() + seconds / 6
            while time.perf_counter() < end:
                started = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - started)
            rows.append(
                {
                    "backend": "onnxruntime_model_only",
                    "candidates": count,
                    "batch": batch,
                    "calls": len(times),
                    "p50_ms": percentile(times, 50) * 1000,
                    "ms_per_user": percentile(times, 50) * 1000 / batch,
                }
            )
            log(f"ORT model only C={count} B={batch}: {rows[-1]['ms_per_user']:.3f} ms per user")
    return rows


# --- servers -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log_path: Path):
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@contextlib.contextmanager
def ranking_service(repository: Path, workdir: Path, name: str, **settings):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_RANKING_")}
    env.update(
        {
            "AISLE_RANKING_PORT": str(port),
            "AISLE_RANKING_METRICS_PORT": "none",
            "AISLE_RANKING_MODEL_REPOSITORY": str(repository),
            "AISLE_RANKING_WATCH_INTERVAL_S": "0",
            "AISLE_RANKING_LOG_LEVEL": "WARNING",
            "OTEL_SDK_DISABLED": "true",
            **{f"AISLE_RANKING_{k.upper()}": str(v) for k, v in settings.items()},
        }
    )
    with process([sys.executable, "-m", "services.ranking"], env, workdir / f"{name}.log") as proc:
        wait_serving(port, proc, workdir / f"{name}.log")
        yield port


def wait_serving(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server not SERVING after {timeout} s: {log_path.read_text()[-2000:]}")


# --- load --------------------------------------------------------------------------------------------------------
def make_requests(item_ids: list[str], candidates: int, count: int = 64, seed: int = 0) -> list[pb.RankRequest]:
    rng = np.random.default_rng(seed + candidates)
    requests = []
    for _ in range(count):
        history = rng.choice(item_ids, size=HISTORY)
        chosen = rng.choice(item_ids, size=candidates, replace=False)
        requests.append(
            pb.RankRequest(
                subject=common_pb2.Subject(user_id="bench"),
                history=[common_pb2.Interaction(item_id=i) for i in history],
                candidate_item_ids=list(chosen),
            )
        )
    return requests


async def closed_loop(port: int, requests: list[pb.RankRequest], concurrency: int, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RankingServiceStub(channel)
        for request in requests[:4]:  # warm the connection and the server
            await stub.Rank(request, timeout=10)
        latencies: list[float] = []
        failures = 0
        stop_at = time.perf_counter() + seconds

        async def caller(offset: int) -> None:
            nonlocal failures
            i = offset
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await stub.Rank(requests[i % len(requests)], timeout=10)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    failures += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "failed": failures,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "throughput_rps": len(latencies) / elapsed,
    }


async def open_loop(port: int, requests: list[pb.RankRequest], rate: float, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RankingServiceStub(channel)
        for request in requests[:8]:
            await stub.Rank(request, timeout=10)
        latencies: list[float] = []
        failures = 0
        total = int(rate * seconds)
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            nonlocal failures
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                await stub.Rank(requests[i % len(requests)], timeout=10)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError:
                failures += 1

        await asyncio.gather(*(one(i) for i in range(total)))
    return {
        "rate_rps": rate,
        "sent": total,
        "failed": failures,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
    }


def measure(name, port, item_ids, args, rows: list, open_rows: list, candidates=CANDIDATES) -> None:
    for count in (c for c in candidates if c in args.candidates):
        requests = make_requests(item_ids, count)
        for concurrency in CONCURRENCY:
            row = asyncio.run(closed_loop(port, requests, concurrency, args.seconds))
            rows.append({"backend": name, "candidates": count, "concurrency": concurrency, **row})
            log(
                f"{name:20s} C={count:4d} c={concurrency:2d}: p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
                f"  {row['throughput_rps']:7.1f} req/s  ({row['failed']} failed)"
            )
    if name in ("embedded_inline", "embedded_batched", "triton"):
        row = asyncio.run(open_loop(port, make_requests(item_ids, 500, seed=9), OPEN_LOOP_RATE, args.open_seconds))
        open_rows.append({"backend": name, "candidates": 500, **row})
        log(
            f"{name:20s} open loop {OPEN_LOOP_RATE:.0f}/s C=500: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Seconds per closed-loop cell.")
    parser.add_argument("--open-seconds", type=float, default=20.0, help="Seconds of the 100 req/s open loop.")
    parser.add_argument("--quick", action="store_true", help="2 s per cell, 5 s open loop (a smoke run).")
    parser.add_argument("--no-triton", action="store_true", help="Skip the Triton configuration.")
    parser.add_argument(
        "--candidates",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=CANDIDATES,
        help="Closed-loop candidate counts to measure, comma-separated (default 100,500,1000).",
    )
    parser.add_argument(
        "--configs",
        type=lambda text: tuple(text.split(",")),
        default=CONFIGS,
        help=f"Server configurations to measure, comma-separated (default {','.join(CONFIGS)}).",
    )
    parser.add_argument("--no-model-only", action="store_true", help="Skip the in-process ORT and torch rows.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranking.json")
    args = parser.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if args.quick:
        args.seconds, args.open_seconds = 2.0, 5.0
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="aisle-bench-ranking-"))
    repository = workdir / "model_repository"
    log(f"exporting the ranker into {repository}")
    module, item_ids, parity = build_model(repository)
    log(f"ONNX Runtime vs torch, max |diff| by candidate count: {parity}")
    rows: list[dict] = []
    open_rows: list[dict] = []
    notes: list[str] = []
    try:
        if "embedded_inline" in args.configs:
            with ranking_service(repository, workdir, "embedded_inline") as port:
                measure("embedded_inline", port, item_ids, args, rows, open_rows)
        if "embedded_batched" in args.configs:
            with ranking_service(repository, workdir, "embedded_batched", inline_max_candidates=0) as port:
                measure("embedded_batched", port, item_ids, args, rows, open_rows)
        if "embedded_unbatched" in args.configs:
            with ranking_service(
                repository, workdir, "embedded_unbatched", batching="false", inference_instances=2
            ) as port:
                measure("embedded_unbatched", port, item_ids, args, rows, open_rows)
        # Triton's GPU queue delay (config.pbtxt: 500 us) on the embedded batcher, to show why its default is 0.
        if "embedded_batched_delay500" in args.configs:
            with ranking_service(repository, workdir, "embedded_batched_delay500", max_queue_delay_us=500) as port:
                measure("embedded_batched_delay500", port, item_ids, args, rows, open_rows, candidates=(500,))
        if args.no_triton or "triton" not in args.configs:
            notes.append("triton skipped")
        else:
            try:
                missing = triton_missing()
                if missing:
                    raise FileNotFoundError(missing)
                with local_triton(repository, workdir / "triton.log") as server:
                    target = server.grpc_target
                    with ranking_service(
                        repository, workdir, "triton", backend="triton", triton_targets=target
                    ) as port:
                        measure("triton", port, item_ids, args, rows, open_rows)
            except (FileNotFoundError, RuntimeError) as error:
                notes.append(f"triton not measured: {error}")
                log(notes[-1])
        model_only = [] if args.no_model_only else ort_model_only(repository, args.seconds)
        eager = [] if args.no_model_only else torch_eager(module, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def cell(backend: str, count: int, concurrency: int) -> dict:
        return next(
            (r for r in rows if (r["backend"], r["candidates"], r["concurrency"]) == (backend, count, concurrency)), {}
        )

    def p99_open(backend: str) -> float | None:
        row = next((r for r in open_rows if r["backend"] == backend), None)
        return row["p99_ms"] if row else None

    batched, unbatched = cell("embedded_batched", 500, 32), cell("embedded_unbatched", 500, 32)
    ratio = batched["throughput_rps"] / unbatched["throughput_rps"] if batched and unbatched else None
    inline, inline_ratio = cell("embedded_inline", 500, 32), None
    if inline and unbatched:
        inline_ratio = inline["throughput_rps"] / unbatched["throughput_rps"]
    # The embedded target is the service's default on a CPU (inline); micro-batching where inline was not measured.
    embedded_p99 = p99_open("embedded_inline")
    if embedded_p99 is None:
        embedded_p99 = p99_open("embedded_batched")
    triton_p99 = p99_open("triton")
    summary = {
        "microbatch_throughput_ratio_c32": ratio,
        "inline_throughput_ratio_c32": inline_ratio,
        "embedded_p99_ms_500": embedded_p99,
        "triton_p99_ms_500": triton_p99,
        "onnx_vs_torch_max_abs_diff": max(parity.values()),
        "targets": {
            "microbatch_ratio_at_least_3": ratio is not None and ratio >= 3,
            "embedded_p99_500_at_most_10ms_at_100rps": embedded_p99 is not None and embedded_p99 <= 10,
            "triton_p99_within_1_5x_embedded": (
                triton_p99 is not None and embedded_p99 is not None and triton_p99 <= 1.5 * embedded_p99
            ),
        },
    }
    report = {
        "summary": summary,
        "closed_loop": rows,
        "open_loop": open_rows,
        "torch_eager": eager,
        "onnxruntime_model_only": model_only,
        "parity_max_abs_diff_by_candidates": parity,
        "notes": notes,
        "setup": {
            "model": "TinySequenceRanker d=64 layers=2 history=50, 5000 items, random weights",
            "seconds_per_cell": args.seconds,
            "open_loop_seconds": args.open_seconds,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"summary: {json.dumps(summary)}")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
