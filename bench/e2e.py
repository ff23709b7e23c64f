"""End-to-end load benchmark: the three services as separate processes under an open-loop load, against a bare
grpc.aio echo chain with the same hops, measured at each rate right after Aisle (the same minute of the machine).

    .venv/bin/python bench/e2e.py [--items 1000000] [--rates 50,100,200,300,400] [--seconds 10]
    (make bench-e2e; make bench-e2e-triton for ranking on a local Triton)

Options worth knowing: ``--workdir DIR`` keeps the trained artefacts for the next run, ``--artifacts DIR
--model-repository DIR`` serves what ``aisle train --data ...`` wrote instead of the synthetic shop,
``--event-loop uvloop``, ``--no-tracing``, ``--profile-rate R`` samples every service with py-spy at that rate
(collapsed stacks in bench/results/profiles/, summarised by bench/profile_summary.py).

Open loop: requests are sent at fixed arrival times and latency is measured from the intended send time, so a slow
answer cannot hide the queueing it causes (no coordinated omission). Writes bench/results/e2e.json (summary keys
p99_ms_at_200rps, saturation_rps, overhead_per_hop_ms, error_rate_at_200rps, echo_p99_ms_at_200rps,
cpu_ratio_to_echo, cpu_ms_per_request_at_200rps), CPU milliseconds per request for every process, and
bench/results/e2e_latency.png.

Every process (the services, the echo chain and this load generator) runs the services' gRPC runtime
(``GRPC_EXPERIMENTS``, services/core/grpc_runtime.py); ``GRPC_EXPERIMENTS= .venv/bin/python bench/e2e.py ...`` runs
them all on gRPC's own defaults instead. The JSON records which.

The latencies and the saturation rate move with the machine's speed (by up to three and a half times from one
session's machine to the next here); ``cpu_ratio_to_echo`` in the summary, Aisle's CPU per request over the echo
chain's at the rates both held, is the figure that compares runs on machines of different speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

#: The gRPC runtime of every process of both chains, this load generator's too (services/core/grpc_runtime.py).
GRPC_RUNTIME = configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

import grpc  # noqa: E402

from aisle.common.v1 import common_pb2 as common  # noqa: E402
from aisle.recommendation.v1 import recommendation_service_pb2 as pb  # noqa: E402
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc  # noqa: E402
from bench.process_cpu import cpu_seconds  # noqa: E402
from services.demo.stack import LocalStack, free_ports  # noqa: E402
from services.demo.triton import local_triton, triton_missing  # noqa: E402
from services.retrieval.index import latest_version  # noqa: E402
from training.synthetic import CATEGORIES, REGIONS  # noqa: E402

#: Items in the synthetic shop's catalog by default: the performance issue's 1M-item catalog.
ITEMS = 1_000_000
#: Seconds of load at each rate before it is measured (not counted): the other chain ran meanwhile.
WARM_UP_S = 1.0


def check_items(parser: argparse.ArgumentParser, items: int) -> None:
    """Refuses (as a usage error) an ``--items`` the synthetic shop cannot be made with."""
    if items < CATEGORIES:
        parser.error(f"--items must be at least {CATEGORIES} (one item per category of the synthetic shop)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


#: Seconds between starting a measurement and its first scheduled send (room to set up the dispatcher).
LEAD_S = 0.05


async def open_loop(send, requests: list, rate: float) -> dict:
    """Sends ``requests`` at ``rate`` per second at fixed times, whatever is still in flight (open loop: latency is
    measured from each request's scheduled time, so neither a slow answer nor a late send hides any of it).

    One dispatcher starts each call at its time, so the load generator's own lateness is measured too
    (``send_late_*``: a row whose sends ran late says more about the generator than the servers). A failed call counts
    as an error, its latency (up to the deadline) in the percentiles. ``achieved_rps``: the answers that succeeded
    per second, over the sending window (``count / rate``) or, when answers came later, from the first scheduled send
    to the last answer."""
    count = len(requests)
    latencies = np.empty(count)
    late = np.empty(count)
    errors = degraded = 0
    stage_ms: dict[str, list[float]] = {}
    last_answer = 0.0

    async def one(i: int, intended: float) -> None:
        nonlocal errors, degraded, last_answer
        late[i] = time.perf_counter() - intended
        try:
            response = await send(requests[i])
        except grpc.aio.AioRpcError:
            errors += 1
            response = None
        last_answer = time.perf_counter()
        latencies[i] = (last_answer - intended) * 1000
        if response is not None and hasattr(response, "degradations"):
            degraded += bool(response.degradations)
            for stage in response.stage_latencies:
                stage_ms.setdefault(stage.stage, []).append(stage.duration_ms)

    start = time.perf_counter() + LEAD_S
    calls = []
    for i in range(count):
        intended = start + i / rate
        wait = intended - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        calls.append(asyncio.create_task(one(i, intended)))
    await asyncio.gather(*calls)
    late_ms = late * 1000
    return {
        "offered_rps": rate,
        "achieved_rps": (count - errors) / max(count / rate, last_answer - start) if count else 0.0,
        "requests": count,
        "errors": errors,
        "error_rate": errors / count,
        "degraded_rate": degraded / count,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
        "send_late_p99_ms": float(np.percentile(late_ms, 99)),
        "send_late_max_ms": float(late_ms.max()),
        "stages_p99_ms": {s: float(np.percentile(v, 99)) for s, v in stage_ms.items()},
        "stages_p50_ms": {s: float(np.percentile(v, 50)) for s, v in stage_ms.items()},
    }


def candidate_totals(stack: LocalStack) -> tuple[float, float]:
    """(sum, count) of the gateway's candidates-per-request histogram (what ranking scored after the merge), from its
    Prometheus metrics: cumulative since the gateway started, so a rate's mean is the difference of two readings."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port = stack.services["gateway"].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: ASYNC210
    totals = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "aisle_gateway_candidates":
            for sample in family.samples:
                for key in totals:
                    if sample.name.endswith("_" + key):
                        totals[key] += sample.value
    return totals["sum"], totals["count"]


def mean_between(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """The mean of what a (sum, count) histogram observed between two readings."""
    count = after[1] - before[1]
    return round((after[0] - before[0]) / count, 1) if count > 0 else None


#: A rate is saturated past these: p99 latency, error rate, degraded answers (a fallback or unranked answer is
#: a worse one, even on time), or fewer successful answers per second than this share of the offered rate.
SATURATION = {"p99_ms": 100.0, "error_rate": 0.01, "degraded_rate": 0.01, "achieved_share": 0.95}


def saturated(row: dict) -> bool:
    return (
        row["achieved_rps"] < SATURATION["achieved_share"] * row["offered_rps"]
        or row["p99_ms"] > SATURATION["p99_ms"]
        or row["error_rate"] > SATURATION["error_rate"]
        or row.get("degraded_rate", 0.0) > SATURATION["degraded_rate"]
    )


#: gRPC hops of a request in both chains: client -> gateway (front), gateway -> retrieval, gateway -> ranking.
HOPS = 3


def summarise(aisle: list[dict], echo: list[dict]) -> dict:
    """The run's summary from its rows (Aisle's and the echo chain's, one per offered rate).

    ``overhead_per_hop_ms`` is the median over the rates both chains held of (Aisle p50 - echo p50) / HOPS, as the
    performance issue defines it; near its knee Aisle queues and the echo chain does not, so the figure grows with the
    rates tried. ``overhead_per_hop_ms_by_rate`` gives each rate's, and ``overhead_per_hop_ms_at_low_load`` the median
    over the held rates at most half the highest held, where neither chain queues."""
    at = {r["offered_rps"]: r for r in aisle}
    echo_at = {r["offered_rps"]: r for r in echo}
    held = held_rates(aisle)
    common_rates = [r for r in held if r in echo_at and not saturated(echo_at[r])]
    by_rate = {r: (at[r]["p50_ms"] - echo_at[r]["p50_ms"]) / HOPS for r in common_rates}
    low = [by_rate[r] for r in common_rates if r <= max(held) / 2]
    return {
        "p99_ms_at_200rps": at.get(200.0, {}).get("p99_ms"),
        "saturation_rps": max(held) if held else 0.0,
        "overhead_per_hop_ms": float(np.median(list(by_rate.values()))) if by_rate else None,
        "overhead_per_hop_ms_by_rate": {f"{r:g}": round(v, 3) for r, v in by_rate.items()},
        "overhead_per_hop_ms_at_low_load": float(np.median(low)) if low else None,
        "error_rate_at_200rps": at.get(200.0, {}).get("error_rate"),
        "degraded_rate_at_200rps": at.get(200.0, {}).get("degraded_rate"),
        "echo_p99_ms_at_200rps": echo_at.get(200.0, {}).get("p99_ms"),
        "cpu_ratio_to_echo": cpu_ratio(aisle, echo, common_rates),
        "cpu_ms_per_request_at_200rps": {
            "aisle": round(total_cpu_ms(at[200.0]), 2) if 200.0 in at else None,
            "echo_chain": round(total_cpu_ms(echo_at[200.0]), 2) if 200.0 in echo_at else None,
        },
    }


def held_rates(rows: list[dict]) -> list[float]:
    """The offered rates below the first saturated one (in increasing order): a rate held only after a lower one
    failed (a slow moment of the machine, with --past-saturation) does not count as held."""
    held = []
    for row in sorted(rows, key=lambda r: r["offered_rps"]):
        if saturated(row):
            break
        held.append(row["offered_rps"])
    return held


def start_profilers(stack: LocalStack, seconds: float, directory: Path) -> list[subprocess.Popen]:
    """py-spy, sampling each service process for ``seconds``; collapsed stacks in ``directory/<service>.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return [
        subprocess.Popen(  # noqa: ASYNC220
            [
                str(spy),
                "record",
                "--pid",
                str(service.process.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(directory / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, service in stack.services.items()
    ]


def random_history(item_ids: list[str], rng: np.random.Generator, size: int = 10) -> list[common.Interaction]:
    """``size`` views of random items: the history every benchmark request carries."""
    return [
        common.Interaction(item_id=item_ids[j], event_type=common.EVENT_TYPE_VIEW)
        for j in rng.integers(0, len(item_ids), size=size)
    ]


def recommend_request(i: int, item_ids: list[str], rng: np.random.Generator) -> pb.RecommendRequest:
    """The benchmark's ``i``-th request: the home surface, a consenting shopper of 5,000, 10 viewed items, k = 10."""
    return pb.RecommendRequest(
        subject=common.Subject(user_id=f"u{i % 5000}"),
        surface=common.SURFACE_HOME,
        consent=True,
        history=random_history(item_ids, rng),
        k=10,
        context=common.RequestContext(region="GB"),
    )


def total_cpu_ms(row: dict) -> float:
    """CPU per request of every process of a measured rate, the load generator's included."""
    return sum(row["cpu_ms_per_request"].values())


def cpu_ratio(aisle: list[dict], echo: list[dict], rates: list[float]) -> float | None:
    """The median over ``rates`` of Aisle's CPU per request (every process) over the echo chain's at the same
    rate: a figure the machine's speed cancels out of, where latencies and saturation move with it. With the
    performance issue's echo chain saturating near 590/s and its target of 300/s for Aisle, the target asks for a
    ratio under about 2 (both being CPU-bound on the same two cores)."""
    aisle_at = {r["offered_rps"]: r for r in aisle}
    echo_at = {r["offered_rps"]: r for r in echo}
    pairs = [(total_cpu_ms(aisle_at[r]), total_cpu_ms(echo_at[r])) for r in rates if r in aisle_at and r in echo_at]
    ratios = [ours / echo for ours, echo in pairs if echo > 0]  # /proc counts 10 ms ticks: a tiny run may read 0
    return round(float(np.median(ratios)), 2) if ratios else None


def cpu_per_request(pids: dict[str, int], tree: dict[str, bool], before: dict[str, float], requests: int) -> dict:
    return {
        name: round((cpu_seconds(pid, tree[name]) - before[name]) * 1000 / requests, 3) for name, pid in pids.items()
    }


@contextlib.asynccontextmanager
async def aisle_target(
    stack: LocalStack,
    item_ids: list[str],
    seconds: float,
    profile_rate: float | None = None,
    profile_dir: Path | None = None,
    extra_pids: dict[str, int] | None = None,
):
    """Yields ``measure(rate) -> row``: Recommend calls to the gateway at ``rate`` for ``seconds``, with the CPU
    per request of every process (the load generator's included)."""
    rng = np.random.default_rng(0)
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)

        def make(i: int) -> pb.RecommendRequest:
            return recommend_request(i, item_ids, rng)

        async def send(request):
            return await stub.Recommend(request, timeout=1.0)

        for i in range(100):
            await send(make(i))  # warm-up

        async def measure(rate: float) -> dict:
            pids = {name: service.process.pid for name, service in stack.services.items()}
            pids.update(extra_pids or {}, **{"load generator": os.getpid()})
            tree = {name: name in (extra_pids or {}) for name in pids}  # Triton: its backend stubs too
            warm_up = [make(i) for i in range(int(rate * WARM_UP_S))]
            await open_loop(send, warm_up, rate)  # back to speed after the echo chain's turn: not counted
            requests = [make(i) for i in range(int(rate * seconds))]  # made before the CPU is read: not counted
            profilers = start_profilers(stack, seconds, profile_dir) if rate == profile_rate else []
            candidates = candidate_totals(stack)
            before = {name: cpu_seconds(pid, tree[name]) for name, pid in pids.items()}
            row = await open_loop(send, requests, rate)
            row["cpu_ms_per_request"] = cpu_per_request(pids, tree, before, row["requests"])
            row["mean_candidates_ranked"] = mean_between(candidates, candidate_totals(stack))
            for profiler in profilers:
                profiler.wait(30)  # noqa: ASYNC222
            cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms_per_request"].items())
            log(
                f"  aisle {rate:.0f}/s: p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, "
                f"errors {row['errors']}, degraded {row['degraded_rate']:.1%}; CPU ms per request: {cpu}"
            )
            return row

        yield measure


@contextlib.asynccontextmanager
async def echo_target(seconds: float):
    """The bare grpc.aio echo chain (client -> front -> two back ends), started here; yields ``measure(rate)``."""
    ports = free_ports(3)
    script = str(ROOT / "bench" / "echo_chain.py")
    processes = [subprocess.Popen([sys.executable, script, "back", str(p)]) for p in ports[1:]]  # noqa: ASYNC220
    processes.append(
        subprocess.Popen([sys.executable, script, "front", str(ports[0]), *[f"127.0.0.1:{p}" for p in ports[1:]]])  # noqa: ASYNC220
    )
    try:
        await asyncio.sleep(1.5)
        payload = b"x" * 600  # about the size of a Recommend request
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            call = channel.unary_unary(
                "/bench.Echo/Call", request_serializer=lambda b: b, response_deserializer=lambda b: b
            )

            async def send(request):
                return await call(request, timeout=1.0)

            for _ in range(100):
                await send(payload)
            pids = {"back 1": processes[0].pid, "back 2": processes[1].pid, "front": processes[2].pid}
            pids["load generator"] = os.getpid()
            tree = dict.fromkeys(pids, False)

            async def measure(rate: float) -> dict:
                await open_loop(send, [payload] * int(rate * WARM_UP_S), rate)
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                row = await open_loop(send, [payload] * int(rate * seconds), rate)
                row["cpu_ms_per_request"] = cpu_per_request(pids, tree, before, row["requests"])
                cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms_per_request"].items())
                log(f"  echo  {rate:.0f}/s: p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms; CPU ms/request: {cpu}")
                return row

            yield measure
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


async def measure_both(
    stack: LocalStack, item_ids: list[str], rates: list[float], args: argparse.Namespace, extra_pids: dict[str, int]
) -> tuple[list[dict], list[dict]]:
    """Aisle and the echo chain rate by rate (Aisle, then the echo chain, at each rate): the baseline is measured in
    the same minute of the machine as what it is compared with. Both sets of processes run throughout; the idle
    one costs nothing measurable."""
    aisle_rows: list[dict] = []
    echo_rows: list[dict] = []
    async with (
        aisle_target(stack, item_ids, args.seconds, args.profile_rate, args.profile_dir, extra_pids) as aisle,
        echo_target(args.seconds) as echo,
    ):
        for rate in rates:
            row = await aisle(rate)
            aisle_rows.append(row)
            if not echo_rows or not saturated(echo_rows[-1]):
                echo_rows.append(await echo(rate))
            if saturated(row) and not args.past_saturation:
                break
    return aisle_rows, echo_rows


#: What prepare_artifacts makes in a workdir (and clears again after an interrupted preparation).
PREPARED = ("model_repository", "index", "ann_index", "catalog.json")
#: What a run leaves in a workdir beside the artefacts (any run, ``--artifacts`` ones too).
RUN_OUTPUTS = ("logs", "policies.yaml", "triton.log", "handlers")


#: How the benchmark builds its ScaNN index: the fewest leaves reaching recall@10 0.95 against exact search on the
#: build's sampled queries (at 1M items, 400 of 2,000 leaves on the shop of 2026-12-05).
INDEX_BUILD = ("--target-recall", "0.95")


def prepare_artifacts(workdir: Path, items: int) -> None:
    """A trained ranker and catalog, and a ScaNN index built by ``aisle index build`` (what production serves).
    Reused when ``workdir`` already holds them for the same item count (the index built again if it was built
    otherwise than :data:`INDEX_BUILD`); refused when it holds another shop's or files of its own; made again when
    an earlier preparation was interrupted."""
    stamp = workdir / "artifacts.json"
    if stamp.exists():
        held = json.loads(stamp.read_text())
        if held.get("complete", True) is False:  # stamped before training, never finished: clear what it left
            log(f"an earlier preparation in {workdir} was interrupted: making the artefacts again")
            for name in PREPARED:
                path = workdir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        elif held.get("items") == items:
            log(f"reusing the artefacts in {workdir}")
            if held.get("index_build") != list(INDEX_BUILD):
                log(f"its index was built with {held.get('index_build') or 'other settings'}: building it again")
                shutil.rmtree(workdir / "ann_index", ignore_errors=True)
                build_ann_index(workdir)
                stamp.write_text(json.dumps({**held, "index_build": list(INDEX_BUILD)}))
            return
        else:
            raise SystemExit(
                f"{workdir} holds the artefacts of a {held.get('items')}-item shop, not {items}: "
                f"pass --items {held.get('items')}, another --workdir, or remove {workdir}"
            )
    elif others := sorted(p.name for p in workdir.iterdir() if p.name not in RUN_OUTPUTS and p.name[0] != "."):
        raise SystemExit(
            f"{workdir} holds files that are not the benchmark's ({', '.join(others[:3])}): choose an empty --workdir"
        )
    stamp.write_text(json.dumps({"items": items, "complete": False}))
    log(f"training a ranker and an index for {items} items")
    train_artifacts(workdir, items)
    build_ann_index(workdir)
    stamp.write_text(json.dumps({"items": items, "complete": True, "index_build": list(INDEX_BUILD)}))


def build_ann_index(workdir: Path) -> None:
    """``aisle index build`` of the trained exact index into ``workdir/ann_index``, as :data:`INDEX_BUILD` says."""
    log(f"building the ScaNN index (aisle index build {' '.join(INDEX_BUILD)})")
    source = next((workdir / "index").iterdir())
    subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "services.cli", "index", "build", str(source), "--out", str(workdir / "ann_index")]
        + list(INDEX_BUILD),
        check=True,
        cwd=ROOT,
    )


def sampler_env(ratio: float) -> dict[str, str]:
    """The services' OpenTelemetry sampler: every span at 1 (what the performance targets are measured with), else
    the share of traces the Kubernetes tracing component samples (``parentbased_traceidratio``)."""
    if ratio >= 1:
        return {"OTEL_TRACES_SAMPLER": "always_on"}
    return {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}


def add_local_configs(repository: Path) -> None:
    """Gives each model folder the project's local Triton config (python backend) where it has none."""
    import shutil

    from services.demo.run import PROJECT_ROOT

    for model_dir in repository.iterdir():
        project = PROJECT_ROOT / "model_repository" / model_dir.name / "configs"
        if model_dir.is_dir() and not (model_dir / "configs").exists() and project.is_dir():
            shutil.copytree(project, model_dir / "configs")


def home_sources(candidates: int) -> dict[str, int]:
    """Source -> candidates the benchmark's home policy asks retrieval for, so that ``candidates`` reach ranking.

    Overlap between sources is removed by the merge: ask for 20% more than the limit. The shipped home policy's
    personal sources come too: buy-again (the request's 10 history items) and co-visitation (the synthetic shop's
    session baskets; sparse there: 1.6 items per basket, so a few neighbours per item), and trending (the synthetic
    index's trending counts are its popularity, so these overlap the popular items)."""
    return {
        "two_tower": candidates * 7 // 10,
        "co_visitation": candidates // 10,
        "buy_again": 20,
        "popularity": candidates * 3 // 10,
        "trending": candidates // 10,
        "cold_start": candidates // 5,
    }


def bench_policies(workdir: Path, candidates: int, one_call: bool = True) -> Path:
    """The shipped policies, with the home surface's sources asking for enough items that ``candidates`` reach
    ranking (the merge keeps at most that many): in one Retrieve call (the default policies' way), or one call
    per source (``one_call=False``, to measure what the batching saves)."""
    import yaml

    from services.gateway.policies import DEFAULT_POLICY_FILE

    wanted = home_sources(candidates)
    if one_call:
        sources = [{"component": "RetrievalSources", "name": "Retrieval", "params": {"sources": wanted}}]
    else:
        sources = [
            {"component": "RetrievalSource", "name": name, "params": {"source": name, "k": k}}
            for name, k in wanted.items()
        ]
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    for name in ("home", "home_diverse"):
        raw["policies"][name].update(candidate_limit=candidates, sources=sources)
    path = workdir / "policies.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_artifacts(workdir: Path, items: int) -> None:
    from services.demo.run import PROJECT_ROOT
    from training.pipeline import train_synthetic
    from training.train_tiny import TrainConfig

    repository = workdir / "model_repository" / "ranker"
    repository.mkdir(parents=True)
    (repository / "config.pbtxt").write_text((PROJECT_ROOT / "model_repository/ranker/config.pbtxt").read_text())
    train_synthetic(
        workdir,
        workdir / "model_repository",
        users=max(2000, items // 20),
        items=items,
        config=TrainConfig(epochs=1, max_examples=100_000),
        progress=False,
    )


def plot(aisle: list[dict], echo: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for rows, label, style in ((aisle, "aisle", "-"), (echo, "echo chain", "--")):
        rates = [r["offered_rps"] for r in rows]
        for key, marker in (("p50_ms", "o"), ("p99_ms", "s")):
            axis.plot(rates, [r[key] for r in rows], style, marker=marker, label=f"{label} {key[:3]}")
    axis.set_xlabel("offered rate (requests/s, open loop)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title("Recommend latency vs offered rate")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=ITEMS, help="items in the synthetic shop's catalog")
    parser.add_argument("--rates", default="50,100,200,300,400,500")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    parser.add_argument("--candidates", type=int, default=500, help="candidates ranked per request")
    parser.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--artifacts", type=Path, help="serve trained artefacts (aisle train --out DIR) instead")
    parser.add_argument("--model-repository", type=Path, help="with --artifacts: where the sequence ranker is")
    parser.add_argument("--ranking-backend", choices=["onnxruntime", "triton"], default="onnxruntime")
    parser.add_argument("--past-saturation", action="store_true", help="measure every rate, even past saturation")
    parser.add_argument("--call-per-source", action="store_true", help="one Retrieve call per source (ablation)")
    parser.add_argument("--no-tracing", action="store_true", help="OpenTelemetry off (to measure its cost)")
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=1.0,
        help="share of traces sampled (parentbased_traceidratio); 1 samples every span, the targets' setting",
    )
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the trained artefacts here")
    parser.add_argument("--profile-rate", type=float, help="sample every service with py-spy at this rate")
    parser.add_argument("--profile-dir", type=Path, default=ROOT / "bench" / "results" / "profiles")
    args = parser.parse_args()
    if not 0 < args.trace_ratio <= 1:
        parser.error("--trace-ratio must be in (0, 1]: --no-tracing turns tracing off")
    check_items(parser, args.items)
    rates = sorted(float(r) for r in args.rates.split(","))
    if args.ranking_backend == "triton" and (missing := triton_missing()):
        parser.error(missing)
    if args.artifacts is not None and args.model_repository is None:
        parser.error("--artifacts needs --model-repository (the folder holding sequence_ranker/)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        if args.workdir is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="aisle-e2e-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        if args.artifacts is None:
            prepare_artifacts(workdir, args.items)
            index_path, catalog = workdir / "ann_index", workdir / "catalog.json"
            repository, model = workdir / "model_repository", "ranker"
        else:  # what `aisle train --data ... --out DIR` wrote (the trained sequence ranker)
            index_path, catalog = args.artifacts / "index", args.artifacts / "catalog.json"
            repository, model = args.model_repository, "sequence_ranker"
        item_ids = (latest_version(index_path) / "item_ids.txt").read_text().split()
        loop = {"event_loop": args.event_loop}
        extra_pids: dict[str, int] = {}
        ranking = {"model_repository": str(repository), "model_name": model, **loop}
        if args.ranking_backend == "triton":
            add_local_configs(repository)
            triton = cleanup.enter_context(local_triton(repository, workdir / "triton.log", models=(model,)))
            ranking.update(backend="triton", triton_targets=triton.grpc_target)
            extra_pids["triton"] = triton.process.pid
            log(f"ranking on a local Triton at {triton.grpc_target} (python backend, configs/local.pbtxt)")
        stack = LocalStack(
            workdir,
            {
                "retrieval": {"index_path": str(index_path), "index_poll_s": "0", **loop},
                "ranking": ranking,
                "gateway": {
                    "catalog_path": str(catalog),
                    "policy_file": str(bench_policies(workdir, args.candidates, not args.call_per_source)),
                    "event_log": "off",
                    "anonymous_cache_ttl_s": "0",
                    "fallback_regions": ",".join(REGIONS),  # as a deployment sets it (k8s/base/config/gateway.env)
                    **loop,
                },
            },
            env={
                **sampler_env(args.trace_ratio),
                "OTEL_SDK_DISABLED": "true" if args.no_tracing else "false",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
            },
        )
        tracing = "off" if args.no_tracing else f"on (no exporter, {args.trace_ratio:g} of traces sampled)"
        log(f"aisle: three processes, tracing {tracing}; the echo chain measured at each rate right after Aisle")
        with stack:
            aisle, echo = asyncio.run(measure_both(stack, item_ids, rates, args, extra_pids))
    summary = summarise(aisle, echo)
    result = {
        "summary": summary,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "items": args.items if args.artifacts is None else len(item_ids),
        "artifacts": str(args.artifacts) if args.artifacts else "synthetic",
        "candidates_ranked": args.candidates,
        "event_loop": {"services": args.event_loop, "load generator and echo chain": "asyncio"},
        "tracing": not args.no_tracing,
        "trace_ratio": None if args.no_tracing else args.trace_ratio,
        "retrieve_calls_per_request": len(home_sources(args.candidates)) if args.call_per_source else 1,
        "ranking_backend": args.ranking_backend,
        "hops": {
            "counted": HOPS,
            "note": "client -> gateway, gateway -> retrieval, gateway -> ranking, as in the echo chain"
            + ("; ranking's calls to Triton count as ranking's work" if args.ranking_backend == "triton" else "")
            + ("; the Retrieve calls per request run concurrently" if args.call_per_source else ""),
        },
        "grpc_experiments": GRPC_RUNTIME,
        "cpus": os.cpu_count(),
        "aisle": aisle,
        "echo_chain": echo,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(aisle, echo, args.out.with_name(args.out.stem + "_latency.png"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
