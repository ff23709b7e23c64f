"""Ranking service settings (environment prefix ``AISLE_RANKING_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from services.core.settings import ServiceSettings, settings_config


class RankingSettings(ServiceSettings):
    model_config = settings_config("AISLE_RANKING_")
    service_label: ClassVar[str] = "ranking"

    port: int = Field(50062, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(9462, ge=0, le=65535, description="Prometheus port; 0 picks, none disables.")
    model_repository: Path = Field(Path("model_repository"), description="Triton-layout model repository.")
    model_name: str = Field("ranker", min_length=1, description="Model folder in the repository.")
    model_version: str = Field(
        "", pattern=r"^[0-9]*$", description="Version to serve; empty serves the newest version (and follows it)."
    )
    max_candidates: int = Field(2000, ge=1, le=100_000, description="Most candidates one request may send.")
    max_history: int = Field(500, ge=1, le=10_000, description="Longest history a request may carry.")
    intra_op_threads: int = Field(1, ge=0, le=64, description="ONNX Runtime threads per inference (0 = all).")

    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="Where the model runs: onnxruntime (embedded, in-process) or triton (servers)."
    )
    triton_targets: str = Field(
        "",
        validate_default=True,
        description=(
            "Triton gRPC addresses, comma-separated host:port, or dns:///name:port of a headless Service, resolved "
            "again at each model watch into one address per pod (at start-up only with watch_interval_s=0). Calls "
            "take turns over the addresses. Required with backend=triton."
        ),
    )
    triton_timeout_s: float = Field(
        1.0, gt=0, le=60, description="Per-call Triton timeout when the caller set no deadline (else the deadline)."
    )
    triton_ready_timeout_s: float = Field(
        30.0, ge=0, le=600, description="How long start-up waits for Triton to report the model ready."
    )
    fallback_to_embedded: bool = Field(
        False,
        description=(
            "With backend=triton: answer with embedded ONNX Runtime when Triton is unavailable, not ready or fails "
            "a call through a fault of its own (flagged, with Triton's reason)."
        ),
    )
    batching: bool = Field(True, description="Micro-batch concurrent requests in the embedded backend.")
    max_batch_size: int = Field(
        0, ge=0, le=1024, description="Most requests per embedded batch; 0 uses config.pbtxt's max_batch_size."
    )
    max_queue_delay_us: int | None = Field(
        0,
        ge=0,
        le=1_000_000,
        description=(
            "Longest wait (us) for an embedded batch to fill. 0: no wait, a batch is what queued while the previous "
            "one ran (best on CPU, see docs/benchmarks.md); none: config.pbtxt's dynamic_batching delay."
        ),
    )
    max_batch_cells: int = Field(
        65_536,
        ge=1,
        le=10_000_000,
        description="Most candidate slots (requests x the widest request, padding included) in one embedded batch.",
    )
    inference_instances: int = Field(
        1, ge=1, le=64, description="Embedded batches run at once (like Triton's instance_group count)."
    )
    inline_max_candidates: int = Field(
        1000,
        ge=0,
        le=100_000,
        description=(
            "With one inference instance on CPU and no queue delay: a request of at most this many candidates that "
            "finds nothing queued runs on the event loop's thread, without the hand-off to the inference thread "
            "(less CPU per request, see docs/benchmarks.md; the loop waits meanwhile). Without batching, every such "
            "request does. 0: never. GPU inference always runs in the inference threads."
        ),
    )
    watch_interval_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds between checks for a newly published or rolled-back version; 0 turns the watch off.",
    )

    @field_validator("triton_targets")
    @classmethod
    def _targets_for_triton(cls, value: str, info: ValidationInfo) -> str:
        targets = [t.strip() for t in value.split(",") if t.strip()]
        if info.data.get("backend") == "triton" and not targets:
            raise ValueError("backend=triton needs at least one Triton address (host:port)")
        for target in targets:
            if target.startswith("dns:"):
                if not target.startswith("dns:///"):
                    raise ValueError(f"{target!r}: name a headless Service as dns:///name:port")
                from services.ranking.backends.triton import dns_name

                dns_name(target)  # raises ValueError naming the target and the form
            elif ":" not in target:
                raise ValueError(f"{target!r} is not host:port")
        return ",".join(targets)

    @property
    def triton_target_list(self) -> list[str]:
        return [t for t in self.triton_targets.split(",") if t]
