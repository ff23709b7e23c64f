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
        description="Index root (the newest version folder under it is served) or one version folder.",
    )
    default_k: int = Field(200, ge=1, le=10_000, description="Candidates per source when a request says k=0.")
    max_k: int = Field(2000, ge=1, le=100_000, description="Largest k a request may ask for, per source.")
    max_history: int = Field(200, ge=1, le=10_000, description="Longest history a request may carry.")
    max_anchors: int = Field(50, ge=1, le=1000, description="Most anchor items a request may carry.")
    max_exclusions: int = Field(5000, ge=0, le=100_000, description="Most exclusion entries per request.")
