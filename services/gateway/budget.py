"""Splits one request's time budget across its stages.

The budget is the shorter of the caller's deadline and the configured total. Each stage gets its share of the
total, but never more than what is left, so a slow early stage cannot push the answer past the deadline.
"""

from __future__ import annotations

import time

from services.core.errors import BudgetExhausted


class RequestBudget:
    def __init__(self, total_s: float, caller_remaining_s: float | None, min_stage_s: float, clock=time.monotonic):
        self._clock = clock
        self.total_s = total_s if caller_remaining_s is None else min(total_s, caller_remaining_s)
        self.min_stage_s = min_stage_s
        self.deadline = clock() + self.total_s

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def check_feasible(self) -> None:
        """Raises :class:`BudgetExhausted` when not even one stage fits: refused before any work starts."""
        self.stage_timeout("the first stage", 0.0)

    def stage_timeout(self, stage: str, share: float) -> float:
        """Seconds the next stage may take; raises :class:`BudgetExhausted` when too little is left."""
        left = self.remaining()
        if left < self.min_stage_s:
            raise BudgetExhausted(f"{left * 1000:.1f} ms left before {stage}; the deadline is too short")
        return max(self.min_stage_s, min(left, share * self.total_s))
