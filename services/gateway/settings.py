"""Gateway settings (environment prefix ``AISLE_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.core.settings import ServiceSettings, settings_config
from services.core.validation import region_problem

DEFAULT_POLICY_FILE = Path(__file__).with_name("policies.yaml")
#: The subject-key salt when none is set: public, so fit for development only.
PUBLIC_SUBJECT_SALT = "aisle"
#: Shorter salts are said to be weak at start-up: a few characters can be found by hashing candidates too.
MIN_SALT_LENGTH = 16


def salt_problem(salt: str) -> str | None:
    """What makes a subject-key salt guessable (the public default, empty, short); None for a good one."""
    if salt == PUBLIC_SUBJECT_SALT:
        return "the public default salt"
    if not salt:
        return "an empty salt"
    if len(salt) < MIN_SALT_LENGTH:
        return f"a salt of {len(salt)} characters"
    return None


class GatewaySettings(ServiceSettings):
    model_config = settings_config("AISLE_GATEWAY_")
    service_label: ClassVar[str] = "gateway"

    port: int = Field(50060, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(9460, ge=0, le=65535, description="Prometheus port; 0 picks, none disables.")
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest gRPC message accepted (above the validators' limits, so oversized fields get "
        "INVALID_ARGUMENT naming the field rather than a transport error).",
    )
    downstream_max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Largest message retrieval and ranking accept (their max_message_bytes): the gateway sends "
        "and reads nothing larger, and refuses a request whose forwarded part would not fit, naming its field.",
    )
    retrieval_target: str = Field("127.0.0.1:50061", min_length=1, description="gRPC target of retrieval.")
    ranking_target: str = Field("127.0.0.1:50062", min_length=1, description="gRPC target of ranking.")
    policy_file: Path = Field(DEFAULT_POLICY_FILE, description="Policies (YAML): components per surface/variant.")
    catalog_path: Path | None = Field(
        Path("artifacts/catalog.json"),
        description="Item catalog snapshot (JSON) the re-ranking components read; none runs without one.",
    )
    total_budget_ms: float = Field(
        120.0, gt=0, le=10_000, description="Time budget of one Recommend call when the caller's deadline is longer."
    )
    min_stage_ms: float = Field(2.0, ge=0, le=1000, description="Below this much time left, a stage is not started.")
    trace_components: bool = Field(
        False, description="A span per pipeline component, not only per stage (each costs CPU on every request)."
    )
    columnar_answers: bool = Field(
        True,
        description="Ask retrieval and ranking for columnar answers (arrays, not a message per candidate). Turn off "
        "while shard routers built before RetrieveRequest.columnar still run: they pass the flag on to newer shards "
        "but read only messages.",
    )
    default_k: int = Field(10, ge=1, le=1000, description="Items returned when a request says k=0.")
    max_k: int = Field(200, ge=1, le=1000, description="Largest k a request may ask for.")
    max_history: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Longest history a request may carry, and the most the gateway sends on: at most retrieval's and "
        "ranking's max_history (200 and 500 by default), which refuse longer ones.",
    )
    ranking_max_candidates: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="The ranking service's max_candidates: a policy that ranks more candidates (its candidate_limit) "
        "is refused at start-up, as ranking would refuse each of its calls.",
    )
    max_anchors: int = Field(50, ge=1, le=1000, description="Most anchor items a request may carry.")
    max_exclusions: int = Field(5000, ge=0, le=100_000, description="Most exclusion entries per request.")
    max_events_per_call: int = Field(1000, ge=1, le=100_000, description="Most events one TrackEvents call may carry.")
    subject_key_salt: SecretStr = Field(
        SecretStr(PUBLIC_SUBJECT_SALT),
        description="Secret mixed into the hashed subject keys that stores, logs and traces hold. Set it from a "
        "secret in production: with the public default, the key of a guessable id (an e-mail) can be found by "
        "hashing candidates. Changing it starts every shopper's session afresh.",
    )
    session_store: Literal["memory", "redis"] = Field(
        "memory", description="Where session events live: this process, or Redis shared by every replica."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the session store / event stream.")
    session_ttl_s: float = Field(1800, gt=0, le=30 * 86400, description="Idle time after which a session is dropped.")
    event_batch_ttl_s: float = Field(
        3600,
        gt=0,
        le=7 * 86400,
        description="How long TrackEvents remembers a batch_id it stored: a retry within it stores nothing again.",
    )
    max_remembered_batches: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Most batch ids a gateway remembers in memory (for the bandit's counts, and the in-memory "
        "session store's retries), about 250 bytes each; the oldest are forgotten first.",
    )
    session_max_events: int = Field(200, ge=1, le=10_000, description="Events kept per session.")
    session_max_exposed_items: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="Distinct items whose exposures one session counts, for the exposure caps; past it the least "
        "shown are forgotten (a scraper showing the whole catalog would otherwise fill the session store alone).",
    )
    session_max_sessions: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Sessions the in-memory store keeps (session_store=memory); past it the least recently used "
        "session is dropped.",
    )
    session_max_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024 * 1024 * 1024,
        description="Approximate memory the in-memory session store may hold (session_store=memory): each event's "
        "serialized size, each exposure-counted item id's size and a fixed cost per session, event and item "
        "(services/gateway/sessions.py, within about 12 % of resident memory); past it the least recently used "
        "sessions are dropped. Sized for the 512 MiB gateway pod, with room for the rest of the process.",
    )
    event_log: Literal["off", "jsonl", "redis"] = Field(
        "jsonl", description="Where exposures and tracked events go: nowhere, a JSON-lines file, or a Redis stream."
    )
    event_log_path: Path = Field(Path("artifacts/events/events.jsonl"), description="The JSON-lines event log.")
    event_log_max_pending: int = Field(
        10_000, ge=1, le=10_000_000, description="Events buffered before TrackEvents answers RESOURCE_EXHAUSTED."
    )
    event_log_max_pending_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        le=4 * 1024**3,
        description="Bytes of JSON-lines records buffered (an exposure record of k=200 is about 17 KB) before "
        "TrackEvents answers RESOURCE_EXHAUSTED and exposure records are refused.",
    )
    anonymous_cache_ttl_s: float = Field(
        30.0, ge=0, le=3600, description="Cache of answers for anonymous traffic per segment; 0 disables."
    )
    anonymous_cache_max_entries: int = Field(
        5_000, ge=1, le=1_000_000, description="Answers the anonymous cache keeps; past it the least recently used go."
    )
    anonymous_cache_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        le=16 * 1024 * 1024 * 1024,
        description="Memory the anonymous cache may hold: each answer as kept, serialized, plus its segment key (the "
        "anchors' strings); past it expired, then least recently used answers go, and an answer larger than the "
        "whole budget is not cached. Sized for the 512 MiB gateway pod, with room for the rest of the process.",
    )
    fallback_regions: str = Field(
        "",
        description="Comma-separated regions whose popular items start-up caches, beside the region-less list: the "
        "answer while retrieval is down for a region no call has filled the cache for yet (a region's fallback "
        "serves only that region's list, unless the policy's CachedPopularSource has other_regions: true).",
    )
    fallback_max_regions: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Regions besides the region-less list and fallback_regions whose popular items the fallback "
        "cache keeps (any region a call names is remembered): past it the least recently stored goes. List the "
        "regions your shop sells in under fallback_regions, which are never pushed out.",
    )
    dependency_wait_log_s: float = Field(
        5.0, gt=0, le=600, description="How often start-up logs that it still waits for retrieval."
    )
    ranking_wait_s: float = Field(
        10.0, ge=0, le=600, description="How long start-up waits for ranking before serving degraded answers."
    )

    @property
    def fallback_region_list(self) -> list[str]:
        return [r.strip() for r in self.fallback_regions.split(",") if r.strip()]

    @field_validator("fallback_regions")
    @classmethod
    def _region_codes(cls, value: str) -> str:
        bad = [r.strip() for r in value.split(",") if region_problem(r.strip())]
        if bad:
            raise ValueError(
                f"not region codes: {', '.join(map(ascii, bad))}; list them comma-separated as requests name them, "
                "e.g. GB,DE,FR"
            )
        return value

    @model_validator(mode="after")
    def _event_log_takes_a_whole_call(self) -> GatewaySettings:
        # A TrackEvents call is accepted whole or refused whole: a buffer smaller than one call refuses it forever.
        if self.event_log != "off" and self.event_log_max_pending < self.max_events_per_call:
            raise ValueError(
                f"event_log_max_pending ({self.event_log_max_pending}) must be at least max_events_per_call "
                f"({self.max_events_per_call}): a call of that many events would be refused on every retry"
            )
        return self
