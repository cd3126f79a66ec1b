"""The poison-message guard's rule: after how many claims without an outcome a message
stops being sent (domain/poison.py)."""

from __future__ import annotations

import pytest

from notifier.domain.poison import DEFAULT_MAX_CLAIMS, quarantine_reason, quarantines


@pytest.mark.parametrize(
    ("claims_so_far", "max_claims", "quarantined"),
    [
        (0, 5, False),  # never claimed: send
        (1, 5, False),  # one lease ran out (a crash): send again
        (4, 5, False),  # the fifth claim still sends
        (5, 5, True),  # claimed five times, no outcome: not a sixth POST
        (9, 5, True),
        (0, 1, False),
        (1, 1, True),  # at most one send without an outcome
    ],
)
def test_when_a_message_is_quarantined(
    claims_so_far: int, max_claims: int, quarantined: bool
) -> None:
    assert quarantines(claims_so_far, max_claims) is quarantined


def test_the_default_allows_five_claims() -> None:
    assert DEFAULT_MAX_CLAIMS == 5
    assert not quarantines(4, DEFAULT_MAX_CLAIMS)
    assert quarantines(5, DEFAULT_MAX_CLAIMS)


def test_the_reason_says_how_many_claims_and_that_it_may_have_been_sent() -> None:
    assert quarantine_reason(5) == (
        "delivery outcome could not be recorded after 5 claims; it may have been sent"
    )
