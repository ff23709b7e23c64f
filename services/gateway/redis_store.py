"""Redis-backed session store and event stream: what several gateway replicas share in production.

Sessions: ``aisle:session:<hashed subject>:events`` is a list of serialized ``Interaction`` messages (trimmed to
``max_events``) and ``...:exposures`` a hash of item -> times shown; both expire together ``ttl_s`` after the
session's last use (a read of its history, or a write to either), as the in-memory store's sessions do: a shopper
browsing with recommendations keeps the history of one early add-to-cart.
Events: one Redis Stream (``aisle:events``) of JSON records, read back by training with XRANGE/XREAD; it is
never trimmed by the gateway, so nothing is dropped silently (retention is the operator's, via XTRIM).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as redis

from aisle.common.v1 import common_pb2 as common
from services.gateway.events import EventLogFull, without_forgotten
from services.gateway.sessions import Batch, least_shown

EVENTS_STREAM = "aisle:events"

log = logging.getLogger(__name__)


def _events_key(key: str) -> str:
    return f"aisle:session:{key}:events"


def _exposures_key(key: str) -> str:
    return f"aisle:session:{key}:exposures"


_BATCH_OUTCOMES = {1: Batch.STORED, 0: Batch.REPEAT, -1: Batch.CONFLICT}


def _batch_key(batch_id: str) -> str:
    return "aisle:track-batch:" + hashlib.sha256(batch_id.encode()).hexdigest()[:32]


#: One TrackEvents call's events, every subject's or none (a script is atomic). ARGV: the batch marker's lifetime
#: (ms; 0: the call names no batch, and KEYS holds no marker), the batch's digest, the session's lifetime (ms),
#: max_events, then per subject its event count and the events. KEYS: the batch's marker when there is one, then
#: each subject's events and exposures keys. When the marker exists the script stores nothing and answers 0 for the
#: same digest (a retry), -1 for another (the id given to other events); 1 when it stored the events.
_APPEND = """
local first = 1
if tonumber(ARGV[1]) > 0 then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1]) then
    if redis.call('GET', KEYS[1]) == ARGV[2] then return 0 end
    return -1
  end
  first = 2
end
local session_ttl, max_events, at = tonumber(ARGV[3]), tonumber(ARGV[4]), 5
for k = first, #KEYS, 2 do
  local count = tonumber(ARGV[at])
  for j = at + 1, at + count do redis.call('RPUSH', KEYS[k], ARGV[j]) end
  at = at + count + 1
  redis.call('LTRIM', KEYS[k], -max_events, -1)
  redis.call('PEXPIRE', KEYS[k], session_ttl)
  redis.call('PEXPIRE', KEYS[k + 1], session_ttl)
end
return 1
"""


class RedisSessionStore:
    """Past ``max_exposed_items`` exposure counts in a session, the least shown are forgotten
    (:func:`~services.gateway.sessions.least_shown`; among equals, in the order Redis lists them)."""

    def __init__(
        self, url: str, ttl_s: float, max_events: int, max_exposed_items: int = 2000, batch_ttl_s: float = 3600
    ):
        self.client = redis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=1.0)
        self.ttl_ms, self.max_events, self.max_exposed_items = int(ttl_s * 1000), max_events, max_exposed_items
        self.batch_ttl_ms = int(batch_ttl_s * 1000)
        self._append = self.client.register_script(_APPEND)

    async def history(self, key: str) -> list[common.Interaction]:
        """The session's events, oldest first; the read is a use of the session (one round trip all the same)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.lrange(_events_key(key), 0, -1)
            self._touch(pipe, key)
            raw, *_ = await pipe.execute()
        return [common.Interaction.FromString(item) for item in raw]

    def _touch(self, pipe, key: str) -> None:
        """Both keys of the session expire ``ttl_s`` from now (a key that does not exist stays so)."""
        pipe.pexpire(_events_key(key), self.ttl_ms)
        pipe.pexpire(_exposures_key(key), self.ttl_ms)

    async def append(self, key: str, events: Sequence[common.Interaction]) -> None:
        await self.append_all({key: events})

    async def append_all(
        self, batches: Mapping[str, Sequence[common.Interaction]], batch_id: str = "", digest: bytes = b""
    ) -> Batch:
        """One script (:data:`_APPEND`) for every subject of the call: all appended, or none; with a ``batch_id`` it
        first sets the batch's marker (its value the batch's ``digest``) and stores nothing when it was set already."""
        keys = [_batch_key(batch_id)] if batch_id else []
        args: list[Any] = [self.batch_ttl_ms if batch_id else 0, digest, self.ttl_ms, self.max_events]
        for key, events in batches.items():
            if events:
                keys += [_events_key(key), _exposures_key(key)]
                args += [len(events), *(event.SerializeToString() for event in events)]
        if not keys:
            return Batch.STORED
        return _BATCH_OUTCOMES[int(await self._append(keys=keys, args=args))]

    async def exposures(self, key: str) -> dict[str, int]:
        raw = await self.client.hgetall(_exposures_key(key))
        return {item.decode(): int(count) for item, count in raw.items()}

    async def add_exposures(self, key: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        name = _exposures_key(key)
        async with self.client.pipeline(transaction=True) as pipe:
            for item in item_ids:
                pipe.hincrby(name, item, 1)
            self._touch(pipe, key)
            pipe.hlen(name)
            *_, size = await pipe.execute()
        if size > self.max_exposed_items:
            forget = least_shown(await self.exposures(key), self.max_exposed_items)
            if forget:
                await self.client.hdel(name, *forget)

    async def forget(self, key: str) -> bool:
        return await self.client.delete(_events_key(key), _exposures_key(key)) > 0

    async def close(self) -> None:
        await self.client.aclose()


class RedisStreamEventSink:
    """Appends event records to a Redis Stream; refuses (EventLogFull) when too many writes are in flight."""

    def __init__(self, url: str, max_pending: int, stream: str = EVENTS_STREAM):
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.stream, self.max_pending = stream, max_pending
        self._pending = 0

    async def start(self) -> None:
        await self.client.ping()

    async def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        if self._pending + len(records) > self.max_pending:
            raise EventLogFull(f"{self._pending} events in flight to Redis")
        self._pending += len(records)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.xadd(self.stream, {"event": json.dumps(record, separators=(",", ":"))})
                await pipe.execute()
        except redis.RedisError as error:
            # The caller reads this: the error's kind, not its text, which names the Redis host and port.
            log.warning("event stream %s: %d events refused: %s", self.stream, len(records), error)
            raise EventLogFull(f"Redis did not take the events ({type(error).__name__})") from None
        finally:
            self._pending -= len(records)

    async def close(self) -> None:
        await self.client.aclose()


async def read_stream(url: str, stream: str = EVENTS_STREAM) -> list[dict[str, Any]]:
    """Every record in the stream, oldest first, its erasures applied (for training and tests; see
    :func:`~services.gateway.events.without_forgotten`)."""
    client = redis.Redis.from_url(url)
    try:
        entries = await client.xrange(stream)
        return without_forgotten([json.loads(fields[b"event"]) for _, fields in entries])
    finally:
        await client.aclose()
