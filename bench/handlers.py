"""Where each service's CPU goes without gRPC: its handler called directly, in this process, with the end-to-end
benchmark's requests (the home policy's sources, 500 candidates ranked, 10-item histories), one after another.

    .venv/bin/python bench/handlers.py [--workdir .cache/e2e-work] [--requests 1500]   (make bench-handlers)

The workdir is bench/e2e.py's: the synthetic shop's artefacts are made there once (1,000,000 items unless
``--items`` says otherwise) and reused.

- ranking: ``RankingServicer.Rank`` on the embedded backend, as its server would call it;
- retrieval: ``RetrievalServicer.Retrieve``, with the time of each source, for the home page's request (the
  end-to-end benchmark's) and for the cart's (``retrieval_cart``: the shipped cart policy's sources, three cart
  items searched for their neighbours, the history excluded);
- gateway: ``RecommendationServicer.Recommend`` with retrieval and ranking as real processes, so its figure is the
  gateway's own work plus the client side of its two calls; the time of each stage and component comes from the
  gateway's own histograms.

CPU per request is ``time.process_time`` (every thread of this process) over the measured requests, after as many
warm-up requests as ``--warm-up``. What the figures leave out, against the services' CPU in bench/e2e.py: the
inbound gRPC server (the echo chain's share) and the interceptors. Writes bench/results/handlers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

from prometheus_client import CollectorRegistry  # noqa: E402

from aisle.common.v1 import common_pb2 as common  # noqa: E402
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb  # noqa: E402
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb  # noqa: E402
from bench.e2e import (  # noqa: E402
    ITEMS,
    bench_policies,
    check_items,
    home_sources,
    log,
    prepare_artifacts,
    random_history,
    recommend_request,
)
from services.core.server import Application  # noqa: E402
from services.demo.stack import LocalStack  # noqa: E402
from services.gateway.components.sources import SOURCES  # noqa: E402
from services.retrieval.index import latest_version  # noqa: E402
from training.synthetic import REGIONS  # noqa: E402

#: Candidates ranked per request, as in bench/e2e.py's default.
CANDIDATES = 500
#: Items in the cart of the retrieval benchmark's cart requests (each one an item-to-item search).
CART_ITEMS = 3


class _Context:
    """The little of a ``grpc.aio.ServicerContext`` the handlers read."""

    def time_remaining(self) -> float:
        return 1.0


class _Capture:
    """A stand-in server that keeps the handlers an application registers: method name -> the servicer's method."""

    def __init__(self) -> None:
        self.methods: dict[str, Callable] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.methods.update({name: handler.unary_unary for name, handler in handlers.items()})


def handler(app: Application, method: str) -> Callable:
    server = _Capture()
    app.register(server)
    return server.methods[method]


async def measure(
    call: Callable[[object], Awaitable[object]],
    requests: list,
    warm_up: int,
    starting: Callable[[], None] = lambda: None,
) -> dict:
    """Calls ``call`` with each request in turn; the figures count those after the first ``warm_up``, and
    ``starting`` runs between the two (to zero what the caller counts itself)."""
    for request in requests[:warm_up]:
        await call(request)
    gc.collect()
    starting()
    wall, cpu = time.perf_counter(), time.process_time()
    for request in requests[warm_up:]:
        await call(request)
    count = len(requests) - warm_up
    return {
        "cpu_ms_per_request": round((time.process_time() - cpu) * 1000 / count, 3),
        "wall_ms_per_request": round((time.perf_counter() - wall) * 1000 / count, 3),
        "requests": count,
    }


def histogram_seconds(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    """Seconds so far in each ``label`` value's children of histogram ``name`` (summed over its other labels)."""
    sums: dict[str, float] = {}
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[sample.labels[label]] = sums.get(sample.labels[label], 0.0) + sample.value
    return sums


def per_request_ms(seconds: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds per request, largest first."""
    return {key: round(value * 1000 / count, 3) for key, value in sorted(seconds.items(), key=lambda kv: -kv[1])}


async def ranking_figures(workdir: Path, item_ids: list[str], count: int, warm_up: int, rng) -> dict:
    from services.ranking.app import build_application
    from services.ranking.settings import RankingSettings

    settings = RankingSettings(
        model_repository=workdir / "model_repository", model_name="ranker", watch_interval_s=0, metrics_port=None
    )
    app = build_application(settings)
    await app.load()
    rank = handler(app, "Rank")
    context = _Context()
    requests = [
        ranking_pb.RankRequest(
            surface=common.SURFACE_HOME,
            history=random_history(item_ids, rng),
            candidate_item_ids=[item_ids[j] for j in rng.choice(len(item_ids), CANDIDATES, replace=False)],
            columnar=True,
        )
        for _ in range(count + warm_up)
    ]
    try:
        return await measure(lambda request: rank(request, context), requests, warm_up)
    finally:
        await app.close()


def cart_sources() -> tuple[dict[int, int], bool]:
    """The shipped cart policy's retrieval call: source -> candidates wanted, and whether it excludes the history."""
    import yaml

    from services.gateway.policies import DEFAULT_POLICY_FILE

    (call,) = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())["policies"]["cart"]["sources"]
    params = call["params"]
    return {SOURCES[name]: k for name, k in params["sources"].items()}, bool(params.get("exclude_history"))


def retrieve_requests(item_ids: list[str], count: int, rng, surface: str) -> list:
    """``count`` Retrieve requests as the gateway sends them for ``surface``: "home" (the end-to-end benchmark's
    sources, no anchors) or "cart" (the shipped cart policy's sources, three cart items as anchors, the history
    excluded: item-to-item searches and a per-request filter mask)."""
    if surface == "home":
        limits, exclude_history, anchors = {SOURCES[name]: k for name, k in home_sources(CANDIDATES).items()}, False, 0
    else:
        (limits, exclude_history), anchors = cart_sources(), CART_ITEMS
    return [
        retrieval_pb.RetrieveRequest(
            surface=common.SURFACE_HOME if surface == "home" else common.SURFACE_CART,
            context=common.RequestContext(region="GB"),
            history=random_history(item_ids, rng),
            anchor_item_ids=[item_ids[j] for j in rng.integers(0, len(item_ids), size=anchors)],
            sources=list(limits),
            source_limits=[retrieval_pb.SourceLimit(source=s, k=k) for s, k in limits.items()],
            exclude_history=exclude_history,
            consent=True,
            columnar=True,
        )
        for _ in range(count)
    ]


async def retrieval_figures(
    workdir: Path, item_ids: list[str], count: int, warm_up: int, rng, surface: str = "home"
) -> dict:
    from services.retrieval.app import build_application
    from services.retrieval.servicer import RetrievalServicer
    from services.retrieval.settings import RetrievalSettings

    settings = RetrievalSettings(index_path=workdir / "ann_index", index_poll_s=0, metrics_port=None)
    app = build_application(settings)
    await app.load()
    retrieve = handler(app, "Retrieve")
    servicer: RetrievalServicer = retrieve.__self__
    spent: dict[str, float] = {}
    for source in servicer.sources.values():  # each source timed by a wrapper around its retrieve
        source.retrieve = timed(source.retrieve, source.name, spent)
    context = _Context()
    requests = retrieve_requests(item_ids, count + warm_up, rng, surface)
    try:
        figures = await measure(lambda request: retrieve(request, context), requests, warm_up, spent.clear)
    finally:
        await app.close()
    figures["sources_ms"] = per_request_ms(spent, count)
    return figures


async def retrieval_cart_figures(workdir: Path, item_ids: list[str], count: int, warm_up: int, rng) -> dict:
    return await retrieval_figures(workdir, item_ids, count, warm_up, rng, surface="cart")


def timed(function: Callable, name: str, spent: dict[str, float]) -> Callable:
    def wrapper(*args):
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    return wrapper


async def gateway_figures(workdir: Path, item_ids: list[str], count: int, warm_up: int, rng) -> dict:
    from services.gateway.app import build_application
    from services.gateway.settings import GatewaySettings

    stack = LocalStack(
        workdir / "handlers",
        {
            "retrieval": {"index_path": str(workdir / "ann_index"), "index_poll_s": "0"},
            "ranking": {"model_repository": str(workdir / "model_repository"), "model_name": "ranker"},
        },
        env={"OTEL_SDK_DISABLED": "true", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    stack.start(only=("retrieval", "ranking"))
    try:
        settings = GatewaySettings(
            retrieval_target=stack.services["retrieval"].target,
            ranking_target=stack.services["ranking"].target,
            catalog_path=workdir / "catalog.json",
            policy_file=bench_policies(workdir, CANDIDATES),
            event_log="off",
            anonymous_cache_ttl_s=0,
            fallback_regions=",".join(REGIONS),
            metrics_port=None,
        )
        registry = CollectorRegistry()
        app = build_application(settings, registry)
        await app.load()
        recommend = handler(app, "Recommend")
        context = _Context()
        requests = [recommend_request(i, item_ids, rng) for i in range(count + warm_up)]
        histograms = {"stages_ms": ("aisle_gateway_stage_seconds", "stage")}
        histograms["components_ms"] = ("aisle_gateway_component_seconds", "component")
        before: dict[str, dict[str, float]] = {}

        def starting() -> None:
            before.update({key: histogram_seconds(registry, *spec) for key, spec in histograms.items()})

        try:
            figures = await measure(lambda request: recommend(request, context), requests, warm_up, starting)
        finally:
            await app.close()
    finally:
        stack.stop()
    for key, spec in histograms.items():
        after = histogram_seconds(registry, *spec)
        figures[key] = per_request_ms({name: after[name] - before[key].get(name, 0.0) for name in after}, count)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "e2e-work", help="as bench/e2e.py's")
    parser.add_argument("--items", type=int, default=ITEMS, help="items in the synthetic shop's catalog")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per handler")
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "handlers.json")
    args = parser.parse_args()
    check_items(parser, args.items)
    if args.requests < 1 or args.warm_up < 0:
        parser.error("--requests must be at least 1 and --warm-up at least 0")
    args.workdir.mkdir(parents=True, exist_ok=True)
    prepare_artifacts(args.workdir, args.items)
    item_ids = (latest_version(args.workdir / "ann_index") / "item_ids.txt").read_text().split()
    rng = np.random.default_rng(0)
    figures = {}
    # The cart's requests come from a generator of their own, so the others are the requests of the runs before
    # the cart was measured (one generator, in this order).
    handlers = (
        ("ranking", ranking_figures, rng),
        ("retrieval", retrieval_figures, rng),
        ("retrieval_cart", retrieval_cart_figures, np.random.default_rng(1)),
        ("gateway", gateway_figures, rng),
    )
    for name, run, generator in handlers:
        figures[name] = asyncio.run(run(args.workdir, item_ids, args.requests, args.warm_up, generator))
        log(f"{name}: {figures[name]}")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "items": len(item_ids), **figures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
