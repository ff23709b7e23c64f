"""What every component class declares, and the shared dependencies components are built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """A component's parameters in a policy file; unknown keys, and infinite or NaN numbers, are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class Dependencies:
    """Shared objects components may use (made once per gateway)."""

    downstream: Any  # .retrieval / .ranking stubs
    sessions: Any  # SessionStore
    feedback: Any  # FeedbackStats
    popular_cache: Any  # PopularCache
    events: Any  # EventSink
    extra: dict[str, Any] = field(default_factory=dict)
    #: Ask retrieval and ranking for columnar answers (GatewaySettings.columnar_answers).
    columnar: bool = True


class ComponentBase:
    kind: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    Params: ClassVar[type[Params]] = Params

    def __init__(self, name: str, params: Params, deps: Dependencies):
        self.name, self.params, self.deps = name, params, deps
