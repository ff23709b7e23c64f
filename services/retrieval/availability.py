"""``aisle index push-availability``: sends stock and sold-in-region updates to every retrieval replica.

Each replica holds its availability updates in its own memory (``IndexHolder.apply_availability``), so a call
through a load-balanced name reaches one pod and leaves the others serving out-of-stock items. This command
resolves each ``--target`` to all of its addresses (a Kubernetes headless Service answers DNS with every ready
pod) and calls every one, in batches the server accepts, each with a deadline. It exits non-zero, naming the
replicas, when any of them was not updated, so that the writer (a CronJob, the inventory system's hook) pushes
again: an update is idempotent, so pushing the same file twice is harmless.

Input is JSON lines, one object per item, with the fields of the ``AvailabilityUpdate`` message:
``{"item_id": "I00042", "stock": 0}`` or ``{"item_id": "I00042", "stock": 3, "set_regions": true,
"sold_in_regions": ["GB", "DE"]}``. Every line is checked before anything is sent.

grpc is imported only when the command runs: ``aisle`` registers this command at start-up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.core.validation import id_problem

#: Bad input lines listed in an error; the rest are counted (as the services count field violations).
MAX_REPORTED_ERRORS = 20
#: Updates per call. A server checks and applies a call on its event loop (about 4 ms per 1,000 updates on the
#: project's machine, 40 ms for its limit of 10,000), so smaller calls keep its Retrieve answers prompt. (A shard
#: router gives each shard shard_update_timeout_ms, 10 s, within the call's own deadline.)
DEFAULT_BATCH_SIZE = 1000
#: Serialized bytes per call, well under the servers' 4 MiB message limit whatever the ids and region lists.
MAX_BATCH_BYTES = 1024 * 1024
#: Unknown ids printed per replica; the rest are counted.
MAX_LISTED_UNKNOWN = 10
#: More batches than this show a progress bar (on a terminal).
PROGRESS_ABOVE_BATCHES = 3
FIELDS = ("item_id", "stock", "set_regions", "sold_in_regions")
FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
INT64 = (-(2**63), 2**63 - 1)


class InvalidUpdates(ValueError):
    """Input lines that are not valid updates: ``errors`` lists the first :data:`MAX_REPORTED_ERRORS` as
    "line N: field: what is wrong", ``total`` counts them all."""

    def __init__(self, errors: list[str], total: int):
        self.errors, self.total = errors, total
        more = total - len(errors)
        super().__init__("\n".join(errors + ([f"... and {more} more bad lines"] if more else [])))


class _FieldError(ValueError):
    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}")


def parse_update(text: str | bytes) -> pb.AvailabilityUpdate:
    """One JSON line as an update; raises ValueError "field: what is wrong" (the first problem only)."""
    try:
        value = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"not a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object (a JSON {type(value).__name__})")
    for key in value:
        if key not in FIELDS:  # a misspelt field would otherwise be dropped silently
            raise _FieldError(str(key)[:40], f"unknown field (an update has {', '.join(FIELDS)})")
    if "item_id" not in value:
        raise _FieldError("item_id", "required")
    item_id = value["item_id"]
    if not isinstance(item_id, str):
        raise _FieldError("item_id", "must be a string")
    if not item_id:
        raise _FieldError("item_id", "must not be empty")
    if problem := id_problem(item_id):  # the retrieval servers' own rule
        raise _FieldError("item_id", problem)
    if "stock" not in value:  # the server sets stock on every update: a missing one would read as 0, out of stock
        raise _FieldError("stock", "required (units in stock; 0 or less is out of stock)")
    stock = value["stock"]
    if isinstance(stock, bool) or not isinstance(stock, int):
        raise _FieldError("stock", f"must be an integer, got {json.dumps(stock)[:40]}")
    if not INT64[0] <= stock <= INT64[1]:
        raise _FieldError("stock", "out of range (a 64-bit integer)")
    set_regions = value.get("set_regions", False)
    if not isinstance(set_regions, bool):
        raise _FieldError("set_regions", "must be true or false")
    regions = value.get("sold_in_regions")
    if set_regions and regions is None:
        raise _FieldError("sold_in_regions", "required when set_regions is true (an empty list: sold nowhere)")
    if regions is not None and not set_regions:
        raise _FieldError("set_regions", "must be true when sold_in_regions is given (or the regions are ignored)")
    if regions is not None:
        if not isinstance(regions, list):
            raise _FieldError("sold_in_regions", "must be a list of region names")
        for i, region in enumerate(regions):
            if not isinstance(region, str) or not region:
                raise _FieldError(f"sold_in_regions[{i}]", "must be a non-empty string")
    return pb.AvailabilityUpdate(item_id=item_id, stock=stock, set_regions=set_regions, sold_in_regions=regions or [])


def read_updates(lines: Iterable[str | bytes]) -> list[pb.AvailabilityUpdate]:
    """Every update in ``lines`` (JSON lines; blank lines skipped), in order; raises :class:`InvalidUpdates`
    naming each bad line (numbered from 1) and field."""
    updates, errors, total = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            updates.append(parse_update(line))
        except ValueError as exc:
            total += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(f"line {number}: {exc}")
    if total:
        raise InvalidUpdates(errors, total)
    return updates


def batches(
    updates: Sequence[pb.AvailabilityUpdate], size: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[pb.UpdateAvailabilityRequest]:
    """``updates`` in order, as requests of at most ``size`` updates and ``max_bytes`` serialized bytes (a single
    larger update still gets a request of its own)."""
    requests, current, current_bytes = [], [], 0
    for update in updates:
        length = update.ByteSize()
        wire = 1 + _varint_length(length) + length  # a repeated field's tag, length and body
        if current and (len(current) == size or current_bytes + wire > max_bytes):
            requests.append(pb.UpdateAvailabilityRequest(updates=current))
            current, current_bytes = [], 0
        current.append(update)
        current_bytes += wire
    if current:
        requests.append(pb.UpdateAvailabilityRequest(updates=current))
    return requests


def _varint_length(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` (also ``dns:///host:port``, ``[ipv6]:port``) as (host, port); ValueError otherwise."""
    address = target.removeprefix("dns:///")
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    unbracketed_ipv6 = ":" in host and not address.startswith("[")
    if not host or unbracketed_ipv6 or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{target!r}: expected host:port (an IPv6 address in brackets: [fd00::1]:50061)")
    return host, int(port)


@dataclass(frozen=True)
class Replica:
    """One retrieval server: its ``address`` (ip:port) and the ``--target`` that named it."""

    address: str
    target: str


@dataclass
class Resolution:
    replicas: list[Replica]
    #: (target, why) for each target that gave no address.
    failures: list[tuple[str, str]]


def resolve_replicas(
    targets: Iterable[str], family: str = "any", getaddrinfo: Callable = socket.getaddrinfo
) -> Resolution:
    """Every address each target's name resolves to, each address once (in the order first seen). A headless
    Service's name gives every ready pod; an IP address gives itself. Raises ValueError on a malformed target."""
    replicas: dict[str, Replica] = {}
    failures = []
    for target in targets:
        host, port = split_target(target)
        try:
            answers = getaddrinfo(host, port, family=FAMILIES[family], type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            failures.append((target, f"cannot resolve: {getattr(exc, 'strerror', None) or exc}"))
            continue
        found = 0
        for answer_family, _, _, _, sockaddr in answers:
            if answer_family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = sockaddr[0]
            address = f"[{ip}]:{sockaddr[1]}" if answer_family == socket.AF_INET6 else f"{ip}:{sockaddr[1]}"
            replicas.setdefault(address, Replica(address, target))
            found += 1
        if not found:
            failures.append((target, f"resolves to no {'' if family == 'any' else family + ' '}address"))
    return Resolution(list(replicas.values()), failures)


@dataclass
class ReplicaResult:
    """What one replica did with the push: updates ``sent`` in answered calls, ``applied`` of them, the ids its
    index does not hold, and the error that stopped it (None: every batch answered)."""

    replica: Replica
    sent: int = 0
    applied: int = 0
    unknown_item_ids: list[str] = field(default_factory=list)
    error: str | None = None

    def describe(self, total: int) -> str:
        via = "" if self.replica.target == self.replica.address else f" (via {self.replica.target})"
        if self.error is not None:
            return f"{self.replica.address}{via}: FAILED after {self.sent} of {total} updates: {self.error}"
        line = f"{self.replica.address}{via}: applied {self.applied} of {self.sent} updates"
        if self.unknown_item_ids:
            shown = self.unknown_item_ids[:MAX_LISTED_UNKNOWN]
            more = len(self.unknown_item_ids) - len(shown)
            line += f"; {len(self.unknown_item_ids)} not in its index: {', '.join(shown)}"
            line += f" and {more} more" if more else ""
        return line


async def push_to_replica(
    replica: Replica,
    requests: Sequence[pb.UpdateAvailabilityRequest],
    timeout_s: float,
    on_batch: Callable[[], None] = lambda: None,
) -> ReplicaResult:
    """Sends ``requests`` to ``replica`` one after the other, each with deadline ``timeout_s``; stops at the first
    failed call (the push is retried whole, so later batches would only make the failure harder to read)."""
    import grpc

    from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
    from services.core.channels import create_channel

    result = ReplicaResult(replica)
    channel = create_channel(replica.address, [pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name])
    try:
        stub = pb_grpc.RetrievalServiceStub(channel)
        for number, request in enumerate(requests, start=1):
            try:
                reply = await stub.UpdateAvailability(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                details = " ".join((exc.details() or "").split())
                details = details if len(details) <= 300 else details[:297] + "..."
                result.error = f"batch {number} of {len(requests)}: {exc.code().name}: {details}"
                break
            result.sent += len(request.updates)
            result.applied += reply.applied_count
            result.unknown_item_ids.extend(reply.unknown_item_ids)
            on_batch()
    finally:
        await channel.close()
    return result


async def push_to_replicas(
    replicas: Sequence[Replica],
    requests: Sequence[pb.UpdateAvailabilityRequest],
    timeout_s: float,
    progress: bool | None = None,
) -> list[ReplicaResult]:
    """Every replica at once, each its batches in order. ``progress``: True/False, or None for a bar on a
    terminal only when there are more than a few batches."""
    from tqdm.auto import tqdm

    if progress is None:
        progress = len(requests) > PROGRESS_ABOVE_BATCHES and sys.stderr.isatty()
    with tqdm(
        total=len(requests) * len(replicas), desc="pushing availability", unit="batch", disable=not progress
    ) as bar:
        return list(
            await asyncio.gather(
                *(push_to_replica(replica, requests, timeout_s, lambda: bar.update()) for replica in replicas)
            )
        )


class _BadInput(click.ClickException):
    exit_code = 2  # as for a usage error: pushing the same input again cannot succeed


@click.command("push-availability")
@click.argument("updates", metavar="UPDATES", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    metavar="HOST:PORT",
    help="Retrieval servers: a name is resolved to every address it has (a headless Service gives every ready "
    "pod, e.g. retrieval.aisle.svc:50061); repeat for explicit addresses.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Deadline of each call, in seconds.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Updates per call, at most the server's limit (MAX_AVAILABILITY_UPDATES, 10,000). A server applies a "
    "call on its event loop, about 4 ms per 1,000 updates, while its Retrieve calls wait.",
)
@click.option(
    "--address-family",
    type=click.Choice(list(FAMILIES)),
    default="any",
    show_default=True,
    help="Which addresses of a name to call (ipv4 where a dual-stack name's pods listen on IPv4 only).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal, many batches].")
def push_availability(
    updates: Path,
    targets: tuple[str, ...],
    timeout_s: float,
    batch_size: int,
    address_family: str,
    progress: bool | None,
) -> None:
    """Set stock and sold-in regions on EVERY retrieval replica.

    UPDATES is a JSON-lines file ("-": standard input), one AvailabilityUpdate per line, e.g.
    {"item_id": "I00042", "stock": 0} or {"item_id": "I00042", "stock": 3, "set_regions": true,
    "sold_in_regions": ["GB", "DE"]}. Every line is checked first: a bad one sends nothing (exit code 2).
    Prints what each replica applied and the ids its index does not hold; exits 1, naming them, when any
    replica was not updated. Updates live in each server's memory: push again after a pod restarts.
    """
    from services.retrieval.servicer import MAX_AVAILABILITY_UPDATES

    if batch_size > MAX_AVAILABILITY_UPDATES:
        raise click.BadParameter(f"a server accepts at most {MAX_AVAILABILITY_UPDATES}", param_hint="--batch-size")
    for target in targets:
        try:
            split_target(target)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--target") from None
    try:
        parsed = _read(updates)
    except InvalidUpdates as exc:
        bad = f"{exc.total} bad line{'s' if exc.total > 1 else ''}"
        raise _BadInput(f"nothing was sent: {bad} in {updates}\n{exc}") from None
    if not parsed:
        click.echo(f"no updates in {updates}: nothing to send")
        return
    requests = batches(parsed, batch_size)
    resolution = resolve_replicas(targets, address_family)
    results = asyncio.run(push_to_replicas(resolution.replicas, requests, timeout_s, progress))
    for result in results:
        click.echo(result.describe(len(parsed)))
    for target, why in resolution.failures:
        click.echo(f"{target}: FAILED: {why}")
    failed = [r.replica.address for r in results if r.error is not None] + [t for t, _ in resolution.failures]
    replicas = len(results) + len(resolution.failures)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {replicas} replicas failed: {', '.join(failed)} (push again: updates are idempotent)"
        )
    click.echo(f"pushed {len(parsed)} updates in {len(requests)} batches to {replicas} replicas")


def _read(path: Path) -> list[pb.AvailabilityUpdate]:
    if str(path) == "-":
        return read_updates(sys.stdin.buffer)
    try:
        with path.open("rb") as stream:
            return read_updates(stream)
    except OSError as exc:
        raise _BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":  # the retrieval image has no `aisle` command (it lacks the training code the command loads)
    from services.core.grpc_runtime import configure_grpc_runtime

    configure_grpc_runtime()
    push_availability(prog_name="python -m services.retrieval.availability")
