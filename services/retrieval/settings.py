"""Retrieval service settings (environment prefix ``AISLE_RETRIEVAL_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.core.settings import ServiceSettings, settings_config


class RetrievalSettings(ServiceSettings):
    model_config = settings_config("AISLE_RETRIEVAL_")
    service_label: ClassVar[str] = "retrieval"

    port: int = Field(50061, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(9461, ge=0, le=65535, description="Prometheus port; 0 picks, none disables.")
    index_path: Path = Field(
        Path("artifacts/index"),
        description="Index root (the newest version folder under it is served) or one version folder. "
        "A router points it at the router/ folder `aisle index build --shards` writes.",
    )
    index_poll_s: float = Field(
        10.0, ge=0, le=3600, description="How often to look for a newer index version to swap in; 0 disables."
    )
    min_spot_check_recall: float = Field(
        0.8, ge=0, le=1, description="A new index whose recall@10 spot-check against exact search is lower is refused."
    )
    exact_search_below: int = Field(
        20_000,
        ge=0,
        le=10_000_000,
        description="When filters allow at most this many items, search them exactly instead of over-fetching.",
    )
    shard_targets: str = Field(
        "",
        description="Comma-separated gRPC targets of index shards. When set, this process is a router: it fans "
        "requests out to the shards and merges their top-k, and serves no index itself.",
    )
    shard_timeout_ms: float = Field(
        50.0, gt=0, le=10_000, description="Router: deadline of each shard's Retrieve call (the request path)."
    )
    shard_update_timeout_ms: float = Field(
        10_000.0,
        gt=0,
        le=600_000,
        description="Router: deadline of each shard's UpdateAvailability call (a batch of stock updates; within "
        "the caller's own deadline).",
    )
    max_k: int = Field(2000, ge=1, le=100_000, description="Largest k a request may ask for, per source.")
    max_history: int = Field(200, ge=1, le=10_000, description="Longest history a request may carry.")
    max_anchors: int = Field(50, ge=1, le=1000, description="Most anchor items a request may carry.")
    max_exclusions: int = Field(5000, ge=0, le=100_000, description="Most exclusion entries per request.")
    query_threads: int = Field(1, ge=0, le=64, description="ONNX Runtime threads for the query tower (0 = all).")
    trace_sources: bool = Field(
        False,
        description="A span per candidate source, not only the Retrieve span with each source's candidate count "
        "(each span costs CPU on every request).",
    )

    @property
    def shards(self) -> list[str]:
        return [t.strip() for t in self.shard_targets.split(",") if t.strip()]
