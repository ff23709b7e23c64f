from __future__ import annotations

import pytest

from services.core.errors import BudgetExhausted
from services.gateway.budget import RequestBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_shorter_of_caller_deadline_and_configured_total_wins():
    assert RequestBudget(0.120, 0.050, 0.002, Clock()).total_s == 0.050
    assert RequestBudget(0.120, 5.0, 0.002, Clock()).total_s == 0.120
    assert RequestBudget(0.120, None, 0.002, Clock()).total_s == 0.120


def test_a_stage_gets_its_share_but_never_more_than_is_left():
    clock = Clock()
    budget = RequestBudget(0.100, None, 0.002, clock)
    assert budget.stage_timeout("retrieval", 0.4) == pytest.approx(0.040)
    clock.now += 0.090  # a slow first stage
    assert budget.stage_timeout("ranking", 0.4) == pytest.approx(0.010)


def test_too_little_time_left_refuses_the_stage():
    clock = Clock()
    budget = RequestBudget(0.100, None, 0.002, clock)
    clock.now += 0.099
    with pytest.raises(BudgetExhausted, match="before ranking"):
        budget.stage_timeout("ranking", 0.4)
