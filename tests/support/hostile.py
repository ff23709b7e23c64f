"""Generated batches of malformed and extreme requests for every public RPC, for memory-bound tests: each request
is a valid base with one to three hostile mutations (limits and one past them, huge and odd strings, unknown enum
values, NaN vectors, timestamps out of range, oversized context fields, oversized messages). Seeded, so a batch is
the same every time it is built. The lists of odd values are shared with the property tests
(tests/integration/test_hostile_input.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb

#: Strings no id should be: empty, control characters, limits (256) and past them, multi-byte, paths, formats.
ODD = ["", " ", "\x00", "\n", "x" * 256, "x" * 257, "é" * 300, "😀" * 80, "../../etc/passwd", "%s%n{0}", "I00001\n"]
BIG_INTS = [-(2**31), -1, 0, 1, 2**31 - 1]
#: (seconds, nanos) of google.protobuf.Timestamp: ordinary, its first and last instants (0001-01-01T00:00:00Z,
#: 9999-12-31T23:59:59.999999999Z) and one past each, far past them, and nanos out of 0..999,999,999.
TIMESTAMPS = [
    (1_700_000_000, 0),
    (-62_135_596_800, 0),
    (-62_135_596_801, 0),
    (253_402_300_799, 999_999_999),
    (253_402_300_800, 0),
    (2**40, 0),
    (-(2**63), 0),
    (2**63 - 1, 0),
    (0, -1),
    (0, 1_000_000_000),
    (-1, -(2**31)),
]
#: Regions: valid, unknown, too long, control characters; then one of 1 MB.
REGIONS = ["GB", "DE", "", "ZZ", "x" * 1000, "\x00"]
HUGE_REGIONS = ["x" * 1_000_000]
#: Context attributes at the limits and past them: count (32), key length (256), value length (1,024), an empty key,
#: control characters; then oversized ones, and one of 6 MB (read by the gateway, whose limit is 16 MB, to name it;
#: past the 4 MiB that retrieval and ranking read).
ATTRIBUTES = [
    {},
    {"page": "home"},
    {f"k{i:0255d}": "v" * 1024 for i in range(32)},
    {f"k{i}": "v" for i in range(33)},
    {"k" * 257: "v"},
    {"": "v"},
    {"k": "v" * 1025},
    {"k": "\x00\n"},
]
HUGE_ATTRIBUTES = [{f"k{i}": "v" * 100 for i in range(2000)}, {"k": "v" * 1_000_000}]
PAST_DOWNSTREAM_ATTRIBUTES = {f"k{i}": "v" * 200_000 for i in range(30)}
#: Outcomes a hostile request may have: an answer or a named refusal. Anything else is a bug.
ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Hostile:
    rpc: str  # "Recommend", "TrackEvents", "Retrieve", "UpdateAvailability", "Rank"
    request: object
    mutations: tuple[str, ...]


class Maker:
    def __init__(self, rng: random.Random, item_ids: Sequence[str]):
        self.rng, self.items = rng, list(item_ids)

    def ids(self, count: int, odd_share: float = 0.3) -> list[str]:
        pool = self.items + [f"unknown-{i}" for i in range(50)]
        return [self.rng.choice(ODD) if self.rng.random() < odd_share else self.rng.choice(pool) for _ in range(count)]

    def history(self, count: int) -> list[common.Interaction]:
        return [
            common.Interaction(
                item_id=item,
                event_type=self.rng.choice([1, 2, 3, 4, 99, 2**20]),
                quantity=self.rng.choice(BIG_INTS),
                event_time=self.timestamp() if self.rng.random() < 0.05 else None,
            )
            for item in self.ids(count)
        ]

    def timestamp(self) -> Timestamp:
        seconds, nanos = self.rng.choice(TIMESTAMPS)
        return Timestamp(seconds=seconds, nanos=nanos)

    def subject(self) -> common.Subject:
        which = self.rng.choice(["none", "user", "session", "huge"])
        if which == "none":
            return common.Subject()
        if which == "huge":
            return common.Subject(user_id="u" * 100_000)
        return common.Subject(**{f"{which}_id": self.rng.choice(ODD + ["u-1", "s-1"])})

    def context(self, huge: bool = True) -> common.RequestContext:
        """``huge``: 2,000 attributes too (not for each of a thousand events in one call). The megabyte regions and
        attributes are left to the property tests: in these batches, repeated every round, their transient buffers
        would move a server's resident size by more than the memory tests' bound, hiding what they measure."""
        return common.RequestContext(
            region=self.rng.choice(REGIONS),
            device=self.rng.choice([0, 1, 99]),
            request_time=self.timestamp() if self.rng.random() < 0.3 else None,
            attributes=self.rng.choice(ATTRIBUTES + HUGE_ATTRIBUTES[:1] if huge else ATTRIBUTES),
        )


def full_exclusions(rng: random.Random, item_ids: Sequence[str]) -> list[str]:
    """5,000 exclusions (the limit), a tenth of the catalog among them: the rest are ids no longer sold. (Excluding
    the whole small test catalog would leave nothing to answer with.)"""
    known = rng.sample(list(item_ids), len(item_ids) // 10)
    return known + [f"discontinued-{i}" for i in range(5000 - len(known))]


def _apply(rng: random.Random, mutations: dict[str, Callable[[object], None]], base: object) -> tuple[str, ...]:
    """One or two mutations, never ``oversized`` (each batch ends with a few of those on purpose)."""
    chosen = tuple(rng.sample(sorted(set(mutations) - {"oversized"}), rng.randint(1, 2)))
    for name in chosen:
        mutations[name](base)
    return chosen


def recommend_batch(item_ids: Sequence[str], count: int, seed: int = 0) -> list[Hostile]:
    rng = random.Random(seed)
    make = Maker(rng, item_ids)
    mutations: dict[str, Callable[[pb.RecommendRequest], None]] = {
        "k": lambda r: setattr(r, "k", rng.choice(BIG_INTS + [200, 201])),
        "history": lambda r: r.history.extend(make.history(rng.choice([0, 200, 201, 3000]))),
        "anchors": lambda r: r.anchor_item_ids.extend(make.ids(rng.choice([1, 50, 51, 2000]))),
        "exclusions": lambda r: r.exclusions.item_ids.extend(make.ids(rng.choice([100, 5000, 5001, 50_000]))),
        "brands": lambda r: r.exclusions.brands.extend(rng.choice(ODD) for _ in range(rng.choice([10, 6000]))),
        "surface": lambda r: setattr(r, "surface", rng.choice([0, 1, 2, 3, 4, 99, 2**20])),
        "context": lambda r: r.context.CopyFrom(make.context()),
        "subject": lambda r: r.subject.CopyFrom(make.subject()),
        "variant": lambda r: setattr(
            r, "experiment_variant_override", rng.choice(["", "control", "diverse", "bogus", "x" * 1000])
        ),
        "consent": lambda r: setattr(r, "consent", rng.random() < 0.5),
        "oversized": lambda r: r.exclusions.categories.extend(["c" * 200] * 90_000),  # ~18 MB: past the limit
    }
    batch = []
    for _ in range(count):
        request = pb.RecommendRequest(
            subject=common.Subject(user_id="u-1"),
            surface=common.SURFACE_HOME,
            context=common.RequestContext(region="GB"),
            consent=True,
            history=make.history(5),
            k=10,
        )
        batch.append(Hostile("Recommend", request, _apply(rng, mutations, request)))
    for _ in range(count // 5):  # valid, and as large as the limits allow: the whole pipeline runs
        request = pb.RecommendRequest(
            subject=common.Subject(user_id=f"u-{rng.randint(0, 20)}"),
            surface=rng.choice([1, 2, 3, 4]),
            context=common.RequestContext(region=rng.choice(["GB", "DE", "FR"])),
            consent=True,
            history=[common.Interaction(item_id=i, event_type=1) for i in rng.choices(item_ids, k=200)],
            anchor_item_ids=rng.sample(item_ids, 50),
            exclusions=common.Exclusions(item_ids=full_exclusions(rng, item_ids)),
            k=200,
        )
        batch.append(Hostile("Recommend", request, ("largest valid",)))
    for _ in range(2):
        request = pb.RecommendRequest(k=10)
        mutations["oversized"](request)
        batch.append(Hostile("Recommend", request, ("oversized",)))
    return batch


def track_events_batch(item_ids: Sequence[str], count: int, seed: int = 1) -> list[Hostile]:
    rng = random.Random(seed)
    make = Maker(rng, item_ids)

    def event() -> pb.TrackedEvent:
        return pb.TrackedEvent(
            subject=make.subject() if rng.random() < 0.3 else common.Subject(user_id=f"u-{rng.randint(0, 20)}"),
            event_type=rng.choice([1, 2, 3, 4, 5, 99]),
            item_id=make.ids(1)[0],
            quantity=rng.choice(BIG_INTS),
            unit_price=rng.choice([0.0, 9.99, -1.0, math.nan, math.inf, -1e308]),
            tracking_token=rng.choices(["", "t" * 32, "t" * 100_000, "\x00"], weights=[30, 60, 1, 9])[0],
            event_time=make.timestamp() if rng.random() < 0.3 else None,
            context=make.context(huge=False) if rng.random() < 0.2 else common.RequestContext(region="GB"),
            consent=rng.random() < 0.5,
        )

    batch = []
    for _ in range(count):
        size = rng.choice([0, 1, 10, 1000, 1001])
        request = pb.TrackEventsRequest(events=[event() for _ in range(size)])
        batch.append(Hostile("TrackEvents", request, (f"{size} events",)))
    return batch


def retrieve_batch(item_ids: Sequence[str], count: int, dimension: int, seed: int = 2) -> list[Hostile]:
    rng = random.Random(seed)
    make = Maker(rng, item_ids)

    def vector(size: int) -> list[float]:
        return [rng.choice([0.1, -0.5, math.nan, math.inf, 1e38]) for _ in range(size)]

    mutations: dict[str, Callable[[retrieval_pb.RetrieveRequest], None]] = {
        "k": lambda r: setattr(r, "k", rng.choice(BIG_INTS + [2000, 2001])),
        "history": lambda r: r.history.extend(make.history(rng.choice([0, 200, 201, 3000]))),
        "anchors": lambda r: r.anchor_item_ids.extend(make.ids(rng.choice([1, 50, 51, 2000]))),
        "sources": lambda r: r.sources.extend(rng.choice([[99], [1, 2, 3, 4, 5], [3] * 1000, [2**20]])),
        "exclusions": lambda r: r.exclusions.item_ids.extend(make.ids(rng.choice([100, 5000, 5001, 50_000]))),
        "query_vector": lambda r: r.history_query_vector.extend(
            vector(rng.choice([1, dimension, dimension + 1, 200_000]))
        ),
        "anchor_vectors": lambda r: r.anchor_vectors.extend(
            retrieval_pb.AnchorVector(item_id=make.ids(1)[0], vector=vector(rng.choice([dimension, 7])))
            for _ in range(rng.choice([1, 50, 51]))
        ),
        "context": lambda r: r.context.CopyFrom(make.context()),
        "flags": lambda r: (setattr(r, "include_out_of_stock", True), setattr(r, "exclude_purchased", True)),
        "oversized": lambda r: r.exclusions.categories.extend(["c" * 200] * 25_000),  # ~5 MB: past 4 MB
    }
    batch = []
    for _ in range(count):
        request = retrieval_pb.RetrieveRequest(
            k=20,
            sources=[common.CANDIDATE_SOURCE_POPULARITY],
            context=common.RequestContext(region="GB"),
            history=make.history(5),
        )
        batch.append(Hostile("Retrieve", request, _apply(rng, mutations, request)))
    for _ in range(count // 5):  # valid, and as large as the limits allow
        request = retrieval_pb.RetrieveRequest(
            k=2000,
            sources=[1, 2, 3, 4, 5],
            context=common.RequestContext(region=rng.choice(["GB", "DE", "FR"])),
            history=[common.Interaction(item_id=i, event_type=1) for i in rng.choices(item_ids, k=200)],
            anchor_item_ids=rng.sample(item_ids, 50),
            exclusions=common.Exclusions(item_ids=full_exclusions(rng, item_ids)),
            consent=True,
        )
        batch.append(Hostile("Retrieve", request, ("largest valid",)))
    for _ in range(2):
        request = retrieval_pb.RetrieveRequest(k=10)
        mutations["oversized"](request)
        batch.append(Hostile("Retrieve", request, ("oversized",)))
    for _ in range(max(1, count // 10)):
        n = rng.choice([0, 1, 100, 10_000])
        updates = [
            retrieval_pb.AvailabilityUpdate(
                item_id=item,
                stock=rng.choice([-(2**63), -1, 0, 5, 2**63 - 1]),
                sold_in_regions=rng.choice([[], ["GB"], ["Mars"], ODD[:3]]),
                set_regions=rng.random() < 0.3,
            )
            # Unknown and odd ids only: a valid update to a known item would change what the other tests see.
            for item in [f"unknown-{i}" if rng.random() < 0.5 else rng.choice(ODD) for i in range(n)]
        ]
        batch.append(
            Hostile("UpdateAvailability", retrieval_pb.UpdateAvailabilityRequest(updates=updates), ("updates",))
        )
    return batch


def rank_batch(item_ids: Sequence[str], count: int, seed: int = 3) -> list[Hostile]:
    rng = random.Random(seed)
    make = Maker(rng, item_ids)
    mutations: dict[str, Callable[[ranking_pb.RankRequest], None]] = {
        "candidates": lambda r: r.candidate_item_ids.extend(make.ids(rng.choice([0, 1, 1999, 2001, 20_000]))),
        "known_candidates": lambda r: r.candidate_item_ids.extend(rng.choices(item_ids, k=2000 - 50)),
        "history": lambda r: r.history.extend(make.history(rng.choice([0, 499, 501, 3000]))),
        "model_name": lambda r: setattr(r, "model_name", rng.choice(["", "ranker", "other", "x" * 1000, "../x"])),
        "model_version": lambda r: setattr(r, "model_version", rng.choice(["", "1", "999", "abc", "-1"])),
        "surface": lambda r: setattr(r, "surface", rng.choice([0, 99, 2**20])),
        "context": lambda r: r.context.CopyFrom(make.context()),
        "subject": lambda r: r.subject.CopyFrom(make.subject()),
        "oversized": lambda r: r.candidate_item_ids.extend(["c" * 200] * 25_000),  # ~5 MB: past 4 MB
    }
    batch = []
    for _ in range(count):
        request = ranking_pb.RankRequest(history=make.history(5), candidate_item_ids=rng.sample(item_ids, 50))
        batch.append(Hostile("Rank", request, _apply(rng, mutations, request)))
    for _ in range(count // 5):  # valid, and as large as the limits allow
        request = ranking_pb.RankRequest(
            history=[common.Interaction(item_id=i, event_type=1) for i in rng.choices(item_ids, k=500)],
            candidate_item_ids=rng.choices(item_ids, k=2000),
        )
        batch.append(Hostile("Rank", request, ("largest valid",)))
    for _ in range(2):
        request = ranking_pb.RankRequest()
        mutations["oversized"](request)
        batch.append(Hostile("Rank", request, ("oversized",)))
    return batch
