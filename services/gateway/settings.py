"""Gateway settings (environment prefix ``AISLE_GATEWAY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from services.core.settings import ServiceSettings, settings_config


class GatewaySettings(ServiceSettings):
    model_config = settings_config("AISLE_GATEWAY_")
    service_label: ClassVar[str] = "gateway"

    port: int = Field(50060, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(9460, ge=0, le=65535, description="Prometheus port; 0 picks, none disables.")
    retrieval_target: str = Field("127.0.0.1:50061", min_length=1, description="gRPC target of retrieval.")
    ranking_target: str = Field("127.0.0.1:50062", min_length=1, description="gRPC target of ranking.")
    total_budget_ms: float = Field(
        120.0, gt=0, le=10_000, description="Time budget of one Recommend call when the caller's deadline is longer."
    )
    retrieval_share: float = Field(0.35, gt=0, lt=1, description="Share of the budget retrieval may use.")
    ranking_share: float = Field(0.45, gt=0, lt=1, description="Share of the budget ranking may use.")
    min_stage_ms: float = Field(2.0, ge=0, le=1000, description="Below this much time left, a stage is not started.")
    default_k: int = Field(10, ge=1, le=1000, description="Items returned when a request says k=0.")
    max_k: int = Field(200, ge=1, le=1000, description="Largest k a request may ask for.")
    candidates_per_source: int = Field(100, ge=1, le=5000, description="Candidates asked of each source.")
    max_history: int = Field(200, ge=1, le=10_000, description="Longest history a request may carry.")
    max_anchors: int = Field(50, ge=1, le=1000, description="Most anchor items a request may carry.")
    max_exclusions: int = Field(5000, ge=0, le=100_000, description="Most exclusion entries per request.")
    dependency_wait_log_s: float = Field(
        5.0, gt=0, le=600, description="How often start-up logs that it still waits for retrieval."
    )
    ranking_wait_s: float = Field(
        10.0, ge=0, le=600, description="How long start-up waits for ranking before serving degraded answers."
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> GatewaySettings:
        if self.retrieval_share + self.ranking_share >= 1:
            raise ValueError("retrieval_share + ranking_share must leave part of the budget for re-ranking")
        return self
