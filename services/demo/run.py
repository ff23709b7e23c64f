"""``aisle demo`` / ``make demo``: the main job end to end, on a fresh machine, with no network and no GPU.

Trains small models on a seeded synthetic shop, starts the three services as processes, sends requests through
the generated stub, prints what came back, shows a degraded answer with ranking stopped, and stops everything.

The workdir is the demo's own: it writes :data:`MARKER` there before training and replaces the model repository and
index of a later run only where that marker is, so a workdir pointed at the project root or at ``aisle train``'s
output is refused, not emptied. SIGTERM stops the services as Ctrl-C does, and the services die with the demo if it
is killed outright. Mistakes in the command line come back as one ``Error:`` line that says what to do.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import grpc

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.errors import details_of
from services.core.paths import not_a_folder
from services.demo.stack import LocalStack, ServiceStartError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "ranker"
DEMO_SHOP = {"users": 1500, "items": 800, "seed": 7}
DEADLINE_S = 0.5
#: Written into a workdir the demo creates (or finds empty); only a workdir holding it has files replaced.
MARKER = ".aisle-demo"
#: What a reusable workdir holds: a previous demo's model version, index version and catalog.
REUSED = {
    "ranker version (model_repository/ranker/<n>/model.onnx)": f"model_repository/{MODEL_NAME}/*/model.onnx",
    "index version (index/<version>/metadata.json)": "index/*/metadata.json",
    "catalog.json": "catalog.json",
}


class DemoError(click.ClickException):
    """A mistake the user can fix: printed as one ``Error:`` line (exit code 1), no traceback."""


def check_workdir(workdir: Path, retrain: bool) -> bool:
    """Says whether to reuse the models in ``workdir``, after checking the demo may use it (raising
    :class:`DemoError` otherwise). Training needs the demo's own workdir, since it replaces what is there."""
    if (why := not_a_folder(workdir)) is not None:
        raise DemoError(f"--workdir {workdir} {why}, not a folder; pass a folder (default artifacts/demo)")
    missing = [what for what, pattern in REUSED.items() if not any(workdir.glob(pattern))]
    if not retrain and not missing:
        return True
    cannot_reuse = f"cannot --reuse {workdir}: it has no {' and no '.join(missing)}"
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise DemoError(
            ("" if retrain else cannot_reuse + "; and ")
            + f"--workdir {workdir} is not empty and was not made by `aisle demo` (it has no {MARKER}); the demo "
            "replaces the model_repository/ and index/ in its workdir, so pass a new or empty folder "
            "(default artifacts/demo), or delete this one first if it is an older demo's"
        )
    if not retrain and len(missing) < len(REUSED):
        raise DemoError(f"{cannot_reuse}; run `aisle demo --workdir {workdir}` without --reuse to train them again")
    return False


def claim_workdir(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text(
        "Made by `aisle demo`, which replaces model_repository/ and index/ in this folder on every run.\n",
        encoding="utf-8",
    )


def prepare_models(workdir: Path, retrain: bool) -> None:
    """Trains into ``workdir`` (its own model repository and index), unless reusing a previous run's."""
    if check_workdir(workdir, retrain):
        print(f"reusing models in {workdir}")
    else:
        train_models(workdir)


def train_models(workdir: Path) -> None:
    from training.pipeline import train_synthetic
    from training.train_tiny import TrainConfig

    claim_workdir(workdir)  # before anything is written: an interrupted run's leftovers stay the demo's to replace
    repository, index = workdir / "model_repository", workdir / "index"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.rmtree(index, ignore_errors=True)
    template = PROJECT_ROOT / "model_repository" / MODEL_NAME / "config.pbtxt"
    (repository / MODEL_NAME).mkdir(parents=True)
    shutil.copy(template, repository / MODEL_NAME / "config.pbtxt")
    print("== training the ranker on a synthetic shop ==")
    artifacts = train_synthetic(
        workdir,
        repository,
        model_name=MODEL_NAME,
        users=DEMO_SHOP["users"],
        items=DEMO_SHOP["items"],
        config=TrainConfig(epochs=2, seed=DEMO_SHOP["seed"]),
    )
    metrics = artifacts.result.metrics
    print(f"exported {artifacts.model_version_dir} and {artifacts.index_dir}")
    print("hold-out (last interaction per user): " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))


def demo_requests(workdir: Path) -> list[tuple[str, pb.RecommendRequest]]:
    from training.synthetic import generate_shop

    shop = generate_shop(n_users=DEMO_SHOP["users"], n_items=DEMO_SHOP["items"], seed=DEMO_SHOP["seed"])
    sequence = max(shop.sequences(), key=len)[-6:]
    history = [
        common.Interaction(item_id=shop.catalog.item_ids[row], event_type=common.EVENT_TYPE_VIEW) for row in sequence
    ]
    history[-1].event_type = common.EVENT_TYPE_PURCHASE
    anchor = shop.catalog.item_ids[int(sequence[-1])]
    context = common.RequestContext(region="GB", device=common.DEVICE_MOBILE)
    return [
        (
            "home page, signed-in customer with history",
            pb.RecommendRequest(
                subject=common.Subject(user_id="customer-42"),
                surface=common.SURFACE_HOME,
                context=context,
                consent=True,
                history=history,
                k=5,
            ),
        ),
        (
            "product page (similar items)",
            pb.RecommendRequest(
                subject=common.Subject(session_id="guest-7"),
                surface=common.SURFACE_PRODUCT_PAGE,
                context=context,
                consent=True,
                anchor_item_ids=[anchor],
                k=5,
            ),
        ),
        (
            "home page, guest without consent (context only)",
            pb.RecommendRequest(
                subject=common.Subject(session_id="guest-8"),
                surface=common.SURFACE_HOME,
                context=context,
                consent=False,
                history=history,
                k=5,
            ),
        ),
    ]


def show(title: str, response: pb.RecommendResponse, catalog: dict, elapsed_ms: float) -> None:
    print(f"\n-- {title} --")
    print(f"   trace id {response.trace_id or '-'}   tracking token {response.tracking_token}")
    versions = ", ".join(f"{v.kind} {v.name}@{v.version}" for v in response.versions)
    print(f"   versions: {versions}")
    for item in response.items:
        info = catalog.get(item.item_id, {})
        sources = "+".join(
            common.CandidateSource.Name(s).removeprefix("CANDIDATE_SOURCE_").lower() for s in item.sources
        )
        reason = item.reasons[0].text if item.reasons else ""
        print(
            f"   {item.position + 1}. {item.item_id} {info.get('title', ''):<22} score {item.score:.3f} "
            f"[{sources}] {reason}"
        )
    stages = "  ".join(f"{s.stage} {s.duration_ms:.1f} ms" for s in response.stage_latencies)
    print(f"   stages: {stages}  (client round trip {elapsed_ms:.1f} ms)")
    for degradation in response.degradations:
        print(
            f"   DEGRADED: {common.DegradationReason.Name(degradation.reason)} at {degradation.stage}: "
            f"{degradation.detail}"
        )


def call(stub, request) -> tuple[pb.RecommendResponse, float]:
    started = time.perf_counter()
    response = stub.Recommend(request, timeout=DEADLINE_S)
    return response, (time.perf_counter() - started) * 1000


class Stopped(SystemExit):
    """Raised in the main thread by SIGTERM, so that the services are stopped on the way out, as for Ctrl-C."""


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


@contextmanager
def sigterm_stops_the_demo() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a CI timeout, a supervisor) unwinds the demo as Ctrl-C does; exit code 143."""
    if not on_main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        ignore_sigterm()  # once: a second SIGTERM must not cut short the services' own stop
        raise Stopped(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Stopped:
        print("\nstopped by SIGTERM; every service the demo started is stopped", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def ignore_sigterm() -> None:
    if on_main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_demo(workdir: Path, retrain: bool = True) -> int:
    with sigterm_stops_the_demo():
        return _run_demo(workdir, retrain)


def _run_demo(workdir: Path, retrain: bool) -> int:
    from training.synthetic import REGIONS as SHOP_REGIONS

    prepare_models(workdir, retrain)
    catalog = json.loads((workdir / "catalog.json").read_text(encoding="utf-8"))
    stack = LocalStack(
        workdir,
        {
            "retrieval": {"index_path": str(workdir / "index")},
            "ranking": {"model_repository": str(workdir / "model_repository"), "model_name": MODEL_NAME},
            "gateway": {
                "catalog_path": str(workdir / "catalog.json"),
                "event_log_path": str(workdir / "events" / "events.jsonl"),
                # As a deployment sets it: the fallback for each of the shop's regions is cached at start-up.
                "fallback_regions": ",".join(SHOP_REGIONS),
            },
        },
        die_with_parent=True,
    )
    print("\n== starting retrieval, ranking and gateway as separate processes ==")
    try:  # from the first start on, so that a SIGTERM at any point stops what was started
        try:
            stack.start()
        except ServiceStartError as error:
            fix = "fix what its log says and run the demo again" if retrain else "run without --reuse to train afresh"
            raise DemoError(
                f"{error.service} did not start ({error.reason}), so the demo stopped the others; {fix}. "
                f"The end of {error.log_path}:\n{error.log_tail}"
            ) from None
        for service in stack.services.values():
            print(
                f"   {service.name:<9} grpc {service.target}  metrics http://127.0.0.1:{service.metrics_port}/metrics"
                f"  log {service.log_path}"
            )
        with grpc.insecure_channel(stack.gateway_target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            for title, request in demo_requests(workdir):
                response, elapsed = call(stub, request)
                show(title, response, catalog, elapsed)

            print("\n== a guest buys two items (TrackEvents); the next answer follows ==")
            guest = common.Subject(session_id="guest-9")
            first_request = pb.RecommendRequest(
                subject=guest,
                surface=common.SURFACE_HOME,
                consent=True,
                k=5,
                context=common.RequestContext(region="GB"),
                experiment_variant_override="control",
            )
            before, elapsed = call(stub, first_request)
            show("guest before any event", before, catalog, elapsed)
            bought = [i.item_id for i in demo_requests(workdir)[0][1].history][-2:]
            stub.TrackEvents(
                pb.TrackEventsRequest(
                    events=[
                        pb.TrackedEvent(
                            subject=guest,
                            event_type=common.EVENT_TYPE_PURCHASE,
                            item_id=item,
                            quantity=1,
                            consent=True,
                            tracking_token=before.tracking_token,
                        )
                        for item in bought
                    ]
                ),
                timeout=DEADLINE_S,
            )
            print(f"   tracked purchases of {', '.join(bought)}")
            after, elapsed = call(stub, first_request)
            show("guest after buying", after, catalog, elapsed)

            print("\n-- an invalid request (k = 1,000,000) --")
            bad = pb.RecommendRequest(subject=common.Subject(user_id="x"), surface=common.SURFACE_HOME, k=1_000_000)
            try:
                stub.Recommend(bad, timeout=DEADLINE_S)
                print("   unexpectedly accepted")
                return 1
            except grpc.RpcError as error:
                _, violations = details_of(error)
                print(f"   {error.code().name}: {violations}")

            print("\n== stopping ranking (SIGTERM) to show a degraded answer ==")
            stack.stop_service("ranking")
            title, request = demo_requests(workdir)[0]
            response, elapsed = call(stub, request)
            show(title + ", ranking down", response, catalog, elapsed)
    finally:
        ignore_sigterm()  # stopping already (see sigterm_stops_the_demo)
        codes = stack.stop()
    print(f"\nall services stopped; exit codes {codes}")
    return 0 if all(code == 0 for code in codes.values()) else 1
