"""Session state shared by the gateway's replicas: recent events per subject and exposure counts.

The embedded default lives in-process (one gateway); production uses Redis so every replica behind the load
balancer sees the same session. Keys are hashed subject ids, never ids in clear. Both stores bound what they keep:
events per session, sessions in memory, and a time to live.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aisle.common.v1 import common_pb2 as common


def subject_key(subject: common.Subject, salt: str = "aisle") -> str:
    """A stable, non-reversible key for a subject (user or session), for stores, logs and traces."""
    which = subject.WhichOneof("id") or "none"
    value = getattr(subject, which, "") if which != "none" else ""
    return hashlib.sha256(f"{salt}:{which}:{value}".encode()).hexdigest()[:32]


class SessionStore(Protocol):
    async def history(self, key: str) -> list[common.Interaction]:
        """Recent events, oldest first."""

    async def append(self, key: str, events: Sequence[common.Interaction]) -> None: ...

    async def exposures(self, key: str) -> dict[str, int]:
        """Times each item was shown to the subject within the exposure window."""

    async def add_exposures(self, key: str, item_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _Session:
    events: list[common.Interaction]
    exposures: dict[str, int]
    touched: float


class InMemorySessionStore:
    """One process's sessions: LRU over ``max_sessions``, ``max_events`` per session, ``ttl_s`` idle lifetime."""

    def __init__(self, ttl_s: float = 1800, max_events: int = 200, max_sessions: int = 100_000, clock=time.monotonic):
        self.ttl_s, self.max_events, self.max_sessions, self.clock = ttl_s, max_events, max_sessions, clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def _get(self, key: str, create: bool) -> _Session | None:
        now = self.clock()
        session = self._sessions.get(key)
        if session is not None and now - session.touched > self.ttl_s:
            del self._sessions[key]
            session = None
        if session is None and create:
            session = self._sessions[key] = _Session([], {}, now)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        if session is not None:
            session.touched = now
            self._sessions.move_to_end(key)
        return session

    async def history(self, key: str) -> list[common.Interaction]:
        session = self._get(key, create=False)
        return list(session.events) if session else []

    async def append(self, key: str, events: Sequence[common.Interaction]) -> None:
        session = self._get(key, create=True)
        session.events.extend(events)
        del session.events[: -self.max_events]

    async def exposures(self, key: str) -> dict[str, int]:
        session = self._get(key, create=False)
        return dict(session.exposures) if session else {}

    async def add_exposures(self, key: str, item_ids: Sequence[str]) -> None:
        session = self._get(key, create=True)
        for item in item_ids:
            session.exposures[item] = session.exposures.get(item, 0) + 1

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._sessions)
