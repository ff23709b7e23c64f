"""Side effects run after the answer is built and never fail the request."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from services.gateway.candidates import Candidates
from services.gateway.components.base import ComponentBase
from services.gateway.pipeline import RequestState


class ExposureLogger(ComponentBase):
    """Records what was shown: one exposure record in the event log (with variant and tracking token), the
    subject's exposure counts in the session store, and the bandit's exposure counts. Without consent only the
    aggregate counts are kept: nothing about the subject."""

    kind: ClassVar[str] = "side_effect"

    async def run(self, state: RequestState, items: Candidates, response) -> None:
        item_ids = items.ids()
        self.deps.feedback.exposed(item_ids)
        if not state.request.consent:
            return
        explored = items.exploration.tolist()
        record = {
            "type": "exposure",
            "at": time.time(),
            "subject": state.subject_key,
            "tracking_token": response.tracking_token,
            "variant": state.variant,
            "surface": state.request.surface,
            "items": [{"item_id": item, "position": i, "exploration": explored[i]} for i, item in enumerate(item_ids)],
        }
        # Each write on its own: a session store that fails must not lose the log's record, nor the reverse.
        outcomes = await asyncio.gather(
            self.deps.events.write([record]),
            self.deps.sessions.add_exposures(state.subject_key, item_ids),
            return_exceptions=True,
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
