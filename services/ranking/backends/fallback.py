"""Triton first; the embedded backend answers when Triton cannot: unreachable, the model not ready, or a request
failed by a fault of Triton's own (a python backend stub found unhealthy); the answer says so and why. A Triton
call that ran out of time is not scored again (the deadline is spent), and a request Triton refused or answered
wrongly, or a full queue, reaches the caller: falling back would hide a fault or move Triton's load onto the
ranking pods.

The embedded backend is loaded and warmed at start-up so a fallback costs no loading time. Triton failing to load
at start-up (unreachable, not ready, or serving a version refused here) does not stop the service (every call falls
back, flagged) and the watch keeps trying to reach it. The fallback is logged once per state change, not per call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from services.ranking.backends.base import (
    BackendUnavailable,
    InferenceServerFault,
    ModelNotReady,
    Ranking,
    RankingBackend,
)
from services.ranking.model_config import ModelConfigError
from services.ranking.served_model import ServedModel

log = logging.getLogger(__name__)


class FallbackBackend:
    def __init__(
        self, primary: RankingBackend, fallback: RankingBackend, on_fallback: Callable[[str], None] | None = None
    ):
        self.primary = primary
        self.fallback = fallback
        self._on_fallback = on_fallback
        self.kind = f"{primary.kind}+{fallback.kind}"
        self.model_name = primary.model_name
        #: Why the last call fell back ("" while the primary answers): a warning when it changes, not every call.
        self._falling_back = ""

    @property
    def model(self) -> ServedModel | None:
        return self.primary.model or self.fallback.model

    @property
    def model_version(self) -> str:
        return self.primary.model_version or self.fallback.model_version

    async def load(self) -> None:
        await self.fallback.load()
        try:
            await self.primary.load()
        except (BackendUnavailable, ModelNotReady, ModelConfigError) as error:
            log.warning(
                "%s not ready at start-up, answering with %s until it is: %s",
                self.primary.kind,
                self.fallback.kind,
                _why(error),
            )

    async def rank(
        self, history_ids: Sequence[str], candidate_ids: Sequence[str], timeout: float | None, version: str = ""
    ) -> Ranking:
        try:
            ranking = await self.primary.rank(history_ids, candidate_ids, timeout, version)
        except (BackendUnavailable, ModelNotReady, InferenceServerFault) as error:
            failed = error
        else:
            if self._falling_back:
                log.warning("%s answers again", self.primary.kind)
                self._falling_back = ""
            return ranking
        if version and version != self.fallback.model_version:
            # The caller pinned a version the fallback does not serve: the primary's failure is the answer (a
            # NOT_FOUND from the fallback would say the version is gone, not that the server is down for now).
            raise failed
        if failed.reason != self._falling_back:  # one line per outage (the fallback metric counts the calls)
            log.warning("%s failed, falling back to %s: %s", self.primary.kind, self.fallback.kind, failed.message)
            self._falling_back = failed.reason
        ranking = await self.fallback.rank(history_ids, candidate_ids, timeout, version)
        if self._on_fallback is not None:
            self._on_fallback(failed.reason)  # counted once the fallback has answered
        return replace(ranking, fallback_reason=failed.reason)

    async def refresh(self) -> bool:
        changed = await self.fallback.refresh()
        if self.primary.model is None:
            try:
                await self.primary.load()
                return True
            except (BackendUnavailable, ModelNotReady, ModelConfigError) as error:
                log.debug("%s still not ready: %s", self.primary.kind, _why(error))
                return changed
        return await self.primary.refresh() or changed

    async def close(self) -> None:
        try:
            await self.primary.close()
        finally:
            await self.fallback.close()


def _why(error: Exception) -> str:
    return getattr(error, "message", None) or str(error)
