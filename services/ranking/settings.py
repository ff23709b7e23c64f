"""Ranking service settings (environment prefix ``AISLE_RANKING_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.core.settings import ServiceSettings, settings_config


class RankingSettings(ServiceSettings):
    model_config = settings_config("AISLE_RANKING_")
    service_label: ClassVar[str] = "ranking"

    port: int = Field(50062, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(9462, ge=0, le=65535, description="Prometheus port; 0 picks, none disables.")
    model_repository: Path = Field(Path("model_repository"), description="Triton-layout model repository.")
    model_name: str = Field("ranker", min_length=1, description="Model folder in the repository.")
    model_version: str = Field(
        "", pattern=r"^[0-9]*$", description="Version to serve; empty serves the newest version."
    )
    max_candidates: int = Field(2000, ge=1, le=100_000, description="Most candidates one request may send.")
    max_history: int = Field(500, ge=1, le=10_000, description="Longest history a request may carry.")
    intra_op_threads: int = Field(1, ge=0, le=64, description="ONNX Runtime threads per inference (0 = all).")
