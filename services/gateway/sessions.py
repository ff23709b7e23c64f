"""Session state shared by the gateway's replicas: recent events per subject and exposure counts.

The embedded default lives in-process (one gateway); production uses Redis so every replica behind the load
balancer sees the same session. Keys are hashed subject ids, never ids in clear. Both stores bound what they keep:
events per session and a time to live; in memory also the sessions and their approximate bytes.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aisle.common.v1 import common_pb2 as common


def subject_key(subject: common.Subject, salt: str = "aisle") -> str:
    """A stable, non-reversible key for a subject (user or session), for stores, logs and traces."""
    which = subject.WhichOneof("id") or "none"
    value = getattr(subject, which, "") if which != "none" else ""
    return hashlib.sha256(f"{salt}:{which}:{value}".encode()).hexdigest()[:32]


class Batch(enum.Enum):
    """What a session store did with a TrackEvents batch that has a ``batch_id``."""

    STORED = "stored"
    #: Stored before with the same events (a retry): nothing stored again.
    REPEAT = "repeat"
    #: The id was given to other events before: nothing stored.
    CONFLICT = "conflict"


def batch_digest(events: bytes) -> bytes:
    """What a batch's events are remembered by (16 bytes of their serialized form's sha256)."""
    return hashlib.sha256(events).digest()[:16]


class RecentBatches:
    """Batch ids remembered with their events' digest for ``ttl_s``, at most ``max_ids`` (the oldest forgotten
    first): about 250 bytes each in CPython (two 16-byte digests, their objects and the ordered dict's entry)."""

    def __init__(self, ttl_s: float = 3600, max_ids: int = 100_000, clock=time.monotonic):
        self.ttl_s, self.max_ids, self.clock = ttl_s, max_ids, clock
        #: digest of the id -> (when, digest of the events), oldest first.
        self._seen: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def see(self, batch_id: str, events: bytes) -> Batch:
        now = self.clock()
        while self._seen and (now - next(iter(self._seen.values()))[0] > self.ttl_s or len(self._seen) >= self.max_ids):
            self._seen.popitem(last=False)
        key = hashlib.sha256(batch_id.encode()).digest()[:16]
        seen = self._seen.get(key)
        if seen is not None:
            return Batch.REPEAT if seen[1] == events else Batch.CONFLICT
        self._seen[key] = (now, events)
        return Batch.STORED


class SessionStore(Protocol):
    async def history(self, key: str) -> list[common.Interaction]:
        """Recent events, oldest first."""

    async def append(self, key: str, events: Sequence[common.Interaction]) -> None: ...

    async def append_all(
        self, batches: Mapping[str, Sequence[common.Interaction]], batch_id: str = "", digest: bytes = b""
    ) -> Batch:
        """Each subject's events appended to its session (one TrackEvents call's): all of them, or, when the store
        fails before taking them, none, so that the caller's retry does not store some twice. With a ``batch_id``
        the store remembers it with the batch's ``digest`` (:func:`batch_digest`) for ``batch_ttl_s``: a retry of
        the same batch stores nothing (``REPEAT``), its reply lost after the store took it included, and the id
        given to other events stores nothing either (``CONFLICT``). Without one, that retry stores them twice
        (at-least-once)."""

    async def exposures(self, key: str) -> dict[str, int]:
        """Times each item was shown to the subject within the exposure window."""

    async def add_exposures(self, key: str, item_ids: Sequence[str]) -> None: ...

    async def forget(self, key: str) -> bool:
        """Deletes the session (its events and exposure counts); True when there was one."""

    async def close(self) -> None: ...


# What the in-memory store counts against ``max_bytes``, calibrated against resident memory (VmRSS) with CPython
# 3.11 and upb protobuf: from sessions of one event or one exposure count to sessions of 200 events with
# 256-character ids, the growth came within about 12 % of the count (5 % over it at most).
#: One session beside its events and exposures: its record, list and dict (as small as they come), 32-character key
#: and LRU slot.
SESSION_BYTES = 640
#: Per stored event beside its serialized size: the bytes object's header, its list slot and a share of the spare ones.
EVENT_BYTES = sys.getsizeof(b"") + 16
#: Per item with an exposure count beside its id's string (its size with its header): the count and the dict slot.
EXPOSURE_BYTES = 32


def _event_bytes(event: bytes) -> int:
    return len(event) + EVENT_BYTES


def _exposure_bytes(item: str) -> int:
    return sys.getsizeof(item) + EXPOSURE_BYTES


@dataclass
class _Session:
    #: Serialized ``Interaction`` messages, oldest first: a parsed one takes over ten times its serialized size.
    events: list[bytes]
    exposures: dict[str, int]
    touched: float
    bytes: int = SESSION_BYTES


def least_shown(exposures: dict[str, int], limit: int) -> list[str]:
    """The items to forget so that at most ``limit`` stay: the least shown, the first shown first among equals
    (``exposures`` in the order items were first shown). An exposure cap acts on the most shown items; a session
    that showed more distinct items than ``limit`` (a scraper, not a shopper) loses the counts that matter least."""
    excess = len(exposures) - limit
    if excess <= 0:
        return []
    # nsmallest keeps the order among equals, as sorted(...)[:excess] would, without sorting the whole session.
    return [item for item, _ in heapq.nsmallest(excess, exposures.items(), key=lambda entry: entry[1])]


class InMemorySessionStore:
    """One process's sessions: ``max_events`` per session, exposure counts for ``max_exposed_items`` items per
    session (:func:`least_shown` goes first), ``ttl_s`` idle lifetime, and LRU over ``max_sessions`` and
    ``max_bytes``.

    Bytes are counted, not measured: ``SESSION_BYTES`` per session, each event's serialized size plus
    ``EVENT_BYTES``, and each exposure-counted item's id string plus ``EXPOSURE_BYTES``. Past either bound the least
    recently used sessions go (expired ones first), the one just written last of all."""

    def __init__(
        self,
        ttl_s: float = 1800,
        max_events: int = 200,
        max_sessions: int = 100_000,
        max_bytes: int = 128 * 1024 * 1024,
        clock=time.monotonic,
        max_exposed_items: int = 2000,
        batch_ttl_s: float = 3600,
        max_batches: int = 100_000,
    ):
        self.ttl_s, self.max_events, self.max_sessions, self.clock = ttl_s, max_events, max_sessions, clock
        self.max_bytes, self.max_exposed_items = max_bytes, max_exposed_items
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._bytes = 0
        #: The batch ids stored, each for ``batch_ttl_s``, at most ``max_batches`` (about 25 MB at 100,000).
        self.batches = RecentBatches(batch_ttl_s, max_batches, clock)

    def _get(self, key: str, create: bool) -> _Session | None:
        now = self.clock()
        session = self._sessions.get(key)
        if session is not None and now - session.touched > self.ttl_s:
            self._drop(key)
            session = None
        if session is None and create:
            session = self._sessions[key] = _Session([], {}, now)
            self._bytes += session.bytes
        if session is not None:
            session.touched = now
            self._sessions.move_to_end(key)
        return session

    def _grew(self, session: _Session, added: int) -> None:
        """Counts ``added`` bytes, then drops expired and least recently used sessions until within the bounds."""
        session.bytes += added
        self._bytes += added
        now = self.clock()
        while self._sessions:
            oldest = next(iter(self._sessions))
            expired = now - self._sessions[oldest].touched > self.ttl_s
            if not (expired or len(self._sessions) > self.max_sessions or self._bytes > self.max_bytes):
                break
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        self._bytes -= self._sessions.pop(key).bytes

    async def history(self, key: str) -> list[common.Interaction]:
        session = self._get(key, create=False)
        return [common.Interaction.FromString(event) for event in session.events] if session else []

    async def append_all(
        self, batches: Mapping[str, Sequence[common.Interaction]], batch_id: str = "", digest: bytes = b""
    ) -> Batch:
        if batch_id and (seen := self.batches.see(batch_id, digest)) is not Batch.STORED:
            return seen
        for key, events in batches.items():  # in memory, nothing fails part-way
            await self.append(key, events)
        return Batch.STORED

    async def append(self, key: str, events: Sequence[common.Interaction]) -> None:
        session = self._get(key, create=True)
        new = [event.SerializeToString() for event in events[-self.max_events :]]
        session.events.extend(new)
        dropped = session.events[: -self.max_events]
        del session.events[: -self.max_events]
        self._grew(session, sum(map(_event_bytes, new)) - sum(map(_event_bytes, dropped)))

    async def exposures(self, key: str) -> dict[str, int]:
        session = self._get(key, create=False)
        return dict(session.exposures) if session else {}

    async def add_exposures(self, key: str, item_ids: Sequence[str]) -> None:
        session = self._get(key, create=True)
        added = 0
        for item in item_ids:
            count = session.exposures.get(item, 0)
            if not count:
                added += _exposure_bytes(item)
            session.exposures[item] = count + 1
        for item in least_shown(session.exposures, self.max_exposed_items):
            del session.exposures[item]
            added -= _exposure_bytes(item)
        self._grew(session, added)

    async def forget(self, key: str) -> bool:
        if self._get(key, create=False) is None:  # none, or expired (dropped by the look)
            return False
        self._drop(key)
        return True

    async def close(self) -> None:
        return None

    @property
    def bytes(self) -> int:
        """Bytes the sessions hold, as counted against ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._sessions)
