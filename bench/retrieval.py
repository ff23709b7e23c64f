"""Retrieval benchmark: ScaNN configurations vs exact numpy vs faiss IVF, filtered search, and the Retrieve RPC.

    .venv/bin/python bench/retrieval.py [--items 1000000] [--dimension 64] [--queries 1000]
    (make bench-retrieval runs it at full size)

Writes bench/results/retrieval.json (the summary keys of the retrieval issue, plus every measured row) and
bench/results/retrieval_recall_latency.png. All methods run in this one process, on the same data and queries,
one after another, so ratios compare like with like; recall@100 is against exact search.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

from bench.process_cpu import cpu_seconds  # noqa: E402
from services.retrieval.build import ScannConfig, build_scann  # noqa: E402
from services.retrieval.search import ExactSearcher, FilteredSearch, ScannSearcher, ScannSearchParams  # noqa: E402

K = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def embeddings_like_trained(items: int, dimension: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors with uneven cluster sizes and norms that grow with popularity, as trained item
    embeddings are (popular items get larger dot products); queries drawn from the same mixture."""
    rng = np.random.default_rng(seed)
    clusters = max(10, items // 1000)
    centres = rng.normal(size=(clusters, dimension)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    assignment = rng.choice(clusters, size=items, p=weights)
    # Noise as large as the centres: clusters overlap, as in trained embeddings, so neighbours are not simply
    # "the query's cluster" (that would make every method look perfect).
    vectors = centres[assignment] + rng.normal(size=(items, dimension)).astype(np.float32)
    vectors *= (1.0 + 0.3 * rng.random(items, dtype=np.float32))[:, None]
    return vectors.astype(np.float32), centres


def make_queries(centres: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centres), size=count)
    return (centres[picks] + rng.normal(size=(count, centres.shape[1]))).astype(np.float32)


def exact_truth(vectors: np.ndarray, queries: np.ndarray, batch: int = 100) -> np.ndarray:
    truth = np.empty((len(queries), K), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ vectors.T
        part = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        truth[start : start + batch] = np.take_along_axis(part, order, axis=1)
    return truth


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def timed_single(search, queries: np.ndarray) -> tuple[np.ndarray, dict]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        rows = search(query)
        times.append(time.perf_counter() - started)
        found.append(np.asarray(rows)[:K])
    ms = np.array(times) * 1000
    return np.array(found), {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def timed_batched(search_batch, queries: np.ndarray, batch: int = 100) -> float:
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        search_batch(queries[start : start + batch])
    return len(queries) / (time.perf_counter() - started)


def bench_exact(vectors, queries, truth) -> dict:
    exact = ExactSearcher(vectors)
    sample = queries[: min(200, len(queries))]
    found, latency = timed_single(lambda q: exact.search(q, K)[0], sample)
    qps = timed_batched(lambda b: exact_truth(vectors, b), queries[: min(500, len(queries))])
    return {
        "method": "exact numpy",
        "recall_at_100": recall(found, truth[: len(sample)]),
        **latency,
        "batched_qps": qps,
        "build_s": 0.0,
    }


def bench_scann(vectors, queries, truth, folder: Path, search_points) -> tuple[list[dict], ScannSearcher, dict]:
    config = ScannConfig.for_items(len(vectors))
    before = rss_mb()
    started = time.perf_counter()
    build_scann(vectors, folder, config)
    build_s = time.perf_counter() - started
    searcher = ScannSearcher(folder, config.search_params())
    memory = rss_mb() - before
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    rows = []
    for fraction, pre_reorder in search_points:
        leaves = max(1, int(round(config.num_leaves * fraction)))
        searcher.params = ScannSearchParams(leaves, pre_reorder)
        found, latency = timed_single(lambda q: searcher.search(q, K)[0], queries)
        qps = timed_batched(lambda b: searcher.search_batched(b, K), queries)
        row = {
            "method": f"scann leaves {leaves}/{config.num_leaves}, reorder {pre_reorder}",
            "leaves_to_search": leaves,
            "pre_reorder": pre_reorder,
            "recall_at_100": recall(found, truth),
            **latency,
            "batched_qps": qps,
            "build_s": build_s,
            "index_mb": size_mb,
            "build_rss_mb": memory,
            "default": (leaves, pre_reorder) == (config.leaves_to_search, config.pre_reorder_num_neighbors),
        }
        rows.append(row)
        log(f"  {row['method']}: recall {row['recall_at_100']:.3f} p50 {row['p50_ms']:.2f} ms qps {qps:.0f}")
    searcher.params = config.search_params()
    return rows, searcher, {"num_leaves": config.num_leaves, "build_s": build_s}


def bench_faiss(vectors, queries, truth, nprobes) -> list[dict]:
    import faiss

    lists = max(16, int(4 * np.sqrt(len(vectors))))
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    before = rss_mb()
    started = time.perf_counter()
    sample = vectors[np.random.default_rng(2).choice(len(vectors), size=min(len(vectors), 100 * lists), replace=False)]
    index.train(sample)
    index.add(vectors)
    build_s = time.perf_counter() - started
    memory = rss_mb() - before
    rows = []
    for nprobe in nprobes:
        index.nprobe = nprobe
        found, latency = timed_single(lambda q: index.search(q[None, :], K)[1][0], queries)
        qps = timed_batched(lambda b: index.search(b, K), queries)
        row = {
            "method": f"faiss IVF{lists},Flat nprobe {nprobe}",
            "nprobe": nprobe,
            "recall_at_100": recall(found, truth),
            **latency,
            "batched_qps": qps,
            "build_s": build_s,
            "build_rss_mb": memory,
        }
        rows.append(row)
        log(f"  {row['method']}: recall {row['recall_at_100']:.3f} p50 {row['p50_ms']:.2f} ms qps {qps:.0f}")
    return rows


def bench_filtered(vectors, queries, searcher) -> list[dict]:
    exact = ExactSearcher(vectors)
    rows = []
    rng = np.random.default_rng(3)
    sample = queries[:200]
    for fraction in (0.5, 0.1, 0.01):
        allowed = rng.random(len(vectors)) < fraction
        filtered = FilteredSearch(searcher, exact)
        allowed_rows = np.flatnonzero(allowed)
        truth = np.array([exact.search_rows(q, allowed_rows, K)[0] for q in sample])
        count = int(allowed.sum())
        found, latency = timed_single(lambda q, f=filtered, a=allowed, c=count: f.search(q, K, a, c)[0], sample)
        rows.append(
            {
                "allowed_fraction": fraction,
                "allowed_items": count,
                "recall_at_100": recall(found, truth),
                "returned_k": float(np.mean([len(f) for f in found])),
                **latency,
            }
        )
        log(f"  filtered {fraction:.0%}: recall {rows[-1]['recall_at_100']:.3f} p50 {latency['p50_ms']:.2f} ms")
    return rows


def bench_service(vectors: np.ndarray, workdir: Path, rate: float, seconds: float) -> dict:
    """Retrieve RPC under an open-loop load (fixed arrival rate) against the service run as its own process."""
    import grpc

    from aisle.common.v1 import common_pb2
    from aisle.retrieval.v1 import retrieval_service_pb2 as pb
    from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
    from services.demo.stack import free_port
    from services.retrieval.index import save_index

    count = len(vectors)
    config = ScannConfig.for_items(count)
    index_root = workdir / "index"
    save_index(
        index_root,
        item_ids=[f"I{i}" for i in range(count)],
        embeddings=vectors,
        popularity=np.linspace(count, 1, count),
        categories=["c"] * count,
        brands=["b"] * count,
        model_name="bench",
        model_version="1",
        regions=["GB", "DE"],
        build_ann=lambda v, f: build_scann(v, f, config),
    )
    port = free_port()
    env = {
        **os.environ,
        "AISLE_RETRIEVAL_PORT": str(port),
        "AISLE_RETRIEVAL_METRICS_PORT": "none",
        "AISLE_RETRIEVAL_INDEX_PATH": str(index_root),
        "AISLE_RETRIEVAL_INDEX_POLL_S": "0",
        "OTEL_SDK_DISABLED": "true",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "services.retrieval"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "server.log", "wb"),
    )
    rng = np.random.default_rng(4)

    def request() -> pb.RetrieveRequest:
        history = [common_pb2.Interaction(item_id=f"I{i}") for i in rng.integers(0, count, size=10)]
        return pb.RetrieveRequest(
            k=100,
            consent=True,
            history=history,
            context=common_pb2.RequestContext(region="GB"),
            sources=[common_pb2.CANDIDATE_SOURCE_TWO_TOWER, common_pb2.CANDIDATE_SOURCE_POPULARITY],
        )

    async def run() -> dict:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
            stub = pb_grpc.RetrievalServiceStub(channel)
            for _ in range(50):  # warm-up
                await stub.Retrieve(request(), timeout=1)
            requests = [request() for _ in range(int(rate * seconds))]
            latencies, errors = [], 0
            cpu_before = (cpu_seconds(server.pid), cpu_seconds(os.getpid()))
            start = time.perf_counter() + 0.05

            async def one(i: int, message) -> None:
                nonlocal errors
                intended = start + i / rate
                await asyncio.sleep(max(0.0, intended - time.perf_counter()))
                try:
                    await stub.Retrieve(message, timeout=1)
                except grpc.aio.AioRpcError:
                    errors += 1
                # From the intended send time: no coordinated omission.
                latencies.append((time.perf_counter() - intended) * 1000)

            await asyncio.gather(*(one(i, m) for i, m in enumerate(requests)))
            server_cpu, client_cpu = (
                (after - before) * 1000 / len(requests)
                for after, before in zip((cpu_seconds(server.pid), cpu_seconds(os.getpid())), cpu_before, strict=True)
            )
            ms = np.array(latencies)
            return {
                "server_cpu_ms_per_call": round(server_cpu, 3),
                "client_cpu_ms_per_call": round(client_cpu, 3),
                "rate_rps": rate,
                "requests": len(requests),
                "errors": errors,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max()),
            }

    try:
        return asyncio.run(run())
    finally:
        server.terminate()
        server.wait(30)


def bench_trained(index_path: Path, queries_count: int) -> dict:
    """The same comparison on a trained index (e.g. the Online Retail two-tower's item embeddings), with queries
    from its own query tower on real histories when it has one, else from noisy item vectors."""
    from services.retrieval.index import latest_version, load_index

    artifact = load_index(latest_version(index_path))
    vectors = artifact.embeddings
    rng = np.random.default_rng(5)
    picks = rng.integers(0, len(vectors), size=(queries_count, 8))
    if artifact.query_tower is not None:
        from services.retrieval.query_encoder import OnnxQueryTower

        tower = OnnxQueryTower(artifact.query_tower, artifact.dimension, len(vectors))
        queries = np.stack([tower.encode(list(row)) for row in picks]).astype(np.float32)
    else:
        queries = vectors[picks[:, 0]] + 0.1 * rng.normal(size=(queries_count, vectors.shape[1])).astype(np.float32)
    truth = exact_truth(vectors, queries)
    rows = [bench_exact(vectors, queries, truth)]
    with tempfile.TemporaryDirectory(prefix="aisle-bench-trained-") as temp:
        rows += bench_scann(vectors, queries, truth, Path(temp), [(0.1, 500), (0.2, 1000)])[0]
    rows += bench_faiss(vectors, queries, truth, [4, 16, 64])
    return {
        "index": str(index_path),
        "items": len(vectors),
        "dimension": int(vectors.shape[1]),
        "queries": "query tower on random 8-item histories" if artifact.query_tower else "noisy item vectors",
        "methods": rows,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, marker in (("scann", "o"), ("faiss", "s"), ("exact", "x")):
        chosen = [r for r in rows if r["method"].startswith(label)]
        if chosen:
            axis.plot(
                [r["p50_ms"] for r in chosen],
                [r["recall_at_100"] for r in chosen],
                marker=marker,
                label=label,
                linestyle="-" if len(chosen) > 1 else "none",
            )
    axis.set_xscale("log")
    axis.set_xlabel("single-query p50 latency (ms, log scale)")
    axis.set_ylabel("recall@100 vs exact")
    axis.set_title("Retrieval: recall vs latency")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="Retrieve RPC load, requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    parser.add_argument(
        "--trained-index",
        type=Path,
        default=None,
        help="also measure a trained index (e.g. artifacts/online_retail/index from make train-online-retail)",
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    log(f"data: {args.items} x {args.dimension} clustered embeddings, {args.queries} queries")
    vectors, centres = embeddings_like_trained(args.items, args.dimension)
    queries = make_queries(centres, args.queries)
    started = time.perf_counter()
    truth = exact_truth(vectors, queries)
    log(f"exact ground truth in {time.perf_counter() - started:.1f} s")

    rows = [bench_exact(vectors, queries, truth)]
    log(f"  exact: p50 {rows[0]['p50_ms']:.2f} ms qps {rows[0]['batched_qps']:.0f}")
    with tempfile.TemporaryDirectory(prefix="aisle-bench-") as temp:
        temp = Path(temp)
        (temp / "scann").mkdir()
        log("scann")
        scann_rows, searcher, scann_build = bench_scann(
            vectors,
            queries,
            truth,
            temp / "scann",
            [(0.02, 500), (0.05, 1000), (0.1, 1000), (0.2, 2000)],
        )
        rows += scann_rows
        log("faiss")
        faiss_rows = bench_faiss(vectors, queries, truth, [4, 8, 16, 32, 64, 128, 256])
        rows += faiss_rows
        log("filtered")
        filtered = bench_filtered(vectors, queries, searcher)
        del searcher
        log(f"Retrieve RPC at {args.rate:.0f} requests/s")
        (temp / "service").mkdir()
        service = bench_service(vectors, temp / "service", args.rate, args.seconds)
        log(
            f"  p50 {service['p50_ms']:.2f} ms p99 {service['p99_ms']:.2f} ms errors {service['errors']}, "
            f"CPU per call: server {service['server_cpu_ms_per_call']:.2f} ms, "
            f"client {service['client_cpu_ms_per_call']:.2f} ms"
        )

    trained = None
    if args.trained_index is not None:
        log(f"trained index {args.trained_index}")
        trained = bench_trained(args.trained_index, min(args.queries, 500))
    default = next(r for r in scann_rows if r["default"])
    exact_row = rows[0]
    same_recall = [r for r in faiss_rows if r["recall_at_100"] >= default["recall_at_100"]]
    summary = {
        "recall_at_100": default["recall_at_100"],
        "speedup_vs_exact_single_query": exact_row["p50_ms"] / default["p50_ms"],
        "p99_ms": default["p99_ms"],
        "faiss_best_same_recall_p50_ms": min((r["p50_ms"] for r in same_recall), default=None),
        "scann_default_p50_ms": default["p50_ms"],
        "retrieve_rpc_p99_ms_at_rate": service["p99_ms"],
        "retrieve_rpc_errors": service["errors"],
    }
    result = {
        "summary": summary,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "data": {"items": args.items, "dimension": args.dimension, "queries": args.queries, "k": K},
        "scann_build": scann_build,
        "methods": rows,
        "filtered": filtered,
        "service": service,
        "trained_index": trained,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out.with_name("retrieval_recall_latency.png"))
    log(f"wrote {args.out}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
