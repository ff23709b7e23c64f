"""Service settings: read from the environment (one prefix per service) and from command-line flags.

Every service describes its settings as a subclass of :class:`ServiceSettings`. Values are validated once, at
start-up; a bad value stops the service with a :class:`SettingsError` that names the environment variable and the
flag, so the operator knows what to change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, get_args

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServiceSettings")
#: The value that unsets an optional setting, as an environment variable or a flag.
NONE = "none"


class SettingsError(ValueError):
    """One or more settings are invalid. The message lists each one with how to set it."""


def settings_config(env_prefix: str) -> SettingsConfigDict:
    """Configuration for a service's settings class: its environment prefix, strict about unknown fields.

    ``none`` as a value unsets an optional setting (``AISLE_GATEWAY_METRICS_PORT=none`` disables metrics; so does
    the flag ``--metrics-port none``, see :func:`load_settings`).
    """
    return SettingsConfigDict(env_prefix=env_prefix, extra="forbid", frozen=True, env_parse_none_str=NONE)


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has. Subclasses set ``model_config = settings_config("AISLE_X_")``."""

    model_config = settings_config("AISLE_")

    #: Service name used in logs, health checks, metrics (unless the application names its role: a shard router's
    #: say ``retrieval-router``) and telemetry resources.
    service_label: ClassVar[str] = "aisle"

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free port, unset disables."
    )
    grace_period_s: float = Field(
        10.0, ge=0, le=300, description="Seconds in-flight calls get to finish after SIGTERM."
    )
    drain_delay_s: float = Field(
        0.0, ge=0, le=60, description="Seconds between NOT_SERVING and refusing new calls, so balancers notice."
    )
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio", description="Event loop implementation; uvloop is faster where installed (see docs/benchmarks.md)."
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest gRPC message accepted."
    )
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="Calls in the service's handlers at once; more are refused at once with RESOURCE_EXHAUSTED "
        "(OVERLOADED, retry after 1 s; counted in the RPC metrics) instead of queueing until their deadlines pass. "
        "Health probes are never refused. Unset: no limit. Size it well above the rate times the p99 latency "
        "(300/s x 50 ms = 15), so only an overload meets it. It bounds the gateway, ranking and a shard router, "
        "whose calls wait on others; a retrieval index server answers in its handler without waiting, one call at "
        "a time, so the limit never binds there.",
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @staticmethod
    def flag_name(field: str) -> str:
        return "--" + field.replace("_", "-")


def load_settings(cls: type[S], overrides: Mapping[str, Any] | None = None) -> S:
    """Builds settings from flags (``overrides``; None values are ignored) over the environment.

    Raises :class:`SettingsError` naming every bad setting, with its environment variable and flag.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - set(cls.model_fields))
    if unknown:
        raise SettingsError(f"unknown setting(s) for {cls.service_label}: {', '.join(unknown)}")
    # ``none`` unsets an optional setting given as a flag too, as it does in the environment.
    given = {key: None if value == NONE and _optional(cls, key) else value for key, value in given.items()}
    # A misspelt variable would otherwise be ignored silently and the default used.
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    known = {cls.env_name(name) for name in cls.model_fields}
    stray = sorted(name for name in os.environ if name.upper().startswith(prefix) and name.upper() not in known)
    if stray:
        raise SettingsError(
            f"unknown environment variable(s) for {cls.service_label}: {', '.join(stray)}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(cls, exc)) from None


def _optional(cls: type[ServiceSettings], field: str) -> bool:
    return type(None) in get_args(cls.model_fields[field].annotation)


def _describe(cls: type[ServiceSettings], exc: ValidationError) -> str:
    lines = [f"invalid {cls.service_label} settings:"]
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings (a model validator): its message names them
            lines.append(f"  {_across(cls, error['msg'])}")
            continue
        field = str(error["loc"][0])
        value = error.get("input")
        shown = f" (got {value!r})" if field in cls.model_fields and not isinstance(value, dict) else ""
        lines.append(f"  {cls.env_name(field)} / {cls.flag_name(field)}: {error['msg']}{shown}")
    return "\n".join(lines)


def _across(cls: type[ServiceSettings], message: str) -> str:
    """A cross-setting error's message, with how to set each setting it names."""
    message = message.removeprefix("Value error, ")
    found = ((re.search(rf"\b{name}\b", message), name) for name in cls.model_fields)
    named = [name for _, name in sorted((match.start(), name) for match, name in found if match)]
    if not named:
        return message
    return f"{message} (set with {', '.join(f'{cls.env_name(n)} / {cls.flag_name(n)}' for n in named)})"


def describe_settings(cls: type[ServiceSettings]) -> list[tuple[str, str, str, str]]:
    """(environment variable, flag, default, description) for each setting: for --help and docs."""
    rows = []
    for name, field in cls.model_fields.items():
        default = "" if field.is_required() else repr(field.default)
        rows.append((cls.env_name(name), cls.flag_name(name), default, field.description or ""))
    return rows
