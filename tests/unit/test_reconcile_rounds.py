"""The reconciler's pace: how many messages a round takes, how many fetches fly at once,
and which counter a fetch that backs off goes under."""

from __future__ import annotations

import pytest

from notifier.dispatch.reconcile_metrics import FetchResult, backed_off
from notifier.dispatch.reconciler import ReconcileConfig


@pytest.mark.parametrize(
    ("after_s", "rate", "poll_s", "round_size", "in_flight"),
    [
        (600, 5, 30.0, 150, 4),  # the defaults: 10 min, 5/s
        (3600, 5, 30.0, 150, 4),  # the poll is capped at 30 s
        (2, 100, 0.5, 50, 20),  # a fast test: a round is half a second of budget
        (0.1, 1, 0.05, 1, 4),  # never fewer than one message
        (600, 100, 30.0, 200, 20),  # never more than the batch
    ],
)
def test_a_round_takes_what_its_budget_fetches_in_one_poll(
    after_s: float, rate: float, poll_s: float, round_size: int, in_flight: int
) -> None:
    config = ReconcileConfig(after_seconds=after_s, give_up_seconds=72 * 3600, rate_per_second=rate)
    assert config.poll_seconds == poll_s
    assert config.round_size == round_size
    assert config.concurrency == in_flight


@pytest.mark.parametrize(
    ("http_status", "result"),
    [
        (429, FetchResult.RATE_LIMITED),
        (500, FetchResult.TWILIO_ERROR),
        (503, FetchResult.TWILIO_ERROR),
        (None, FetchResult.NO_ANSWER),
    ],
)
def test_a_fetch_that_backs_off_is_counted_by_cause(
    http_status: int | None, result: FetchResult
) -> None:
    assert backed_off(http_status) is result
