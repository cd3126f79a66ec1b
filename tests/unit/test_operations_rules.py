"""domain.operations: when CancelMessage and RetryMessages may act, as tables."""

from __future__ import annotations

import pytest

from notifier.domain.errors import PreconditionFailed
from notifier.domain.model import Status
from notifier.domain.operations import Cancel, Requeue, Skip, judge_cancel, judge_requeue

NOW = 1_000_000


@pytest.mark.parametrize(
    ("status", "lease", "expected"),
    [
        (Status.PENDING, None, Cancel.NOW),
        (Status.SCHEDULED, None, Cancel.NOW),
        (Status.PENDING, NOW - 1, Cancel.NOW),  # a lease that ran out: its worker died
        (Status.CANCELED, None, Cancel.ALREADY),
    ],
)
def test_cancelable(status: Status, lease: int | None, expected: Cancel) -> None:
    assert judge_cancel("m1", status, lease, NOW) is expected


@pytest.mark.parametrize(
    ("status", "lease", "reason"),
    [
        (Status.QUEUED, None, "NOT_CANCELABLE"),
        (Status.DELIVERED, None, "NOT_CANCELABLE"),
        (Status.FAILED, None, "NOT_CANCELABLE"),
        (Status.EXPIRED, None, "NOT_CANCELABLE"),
        (Status.PENDING, NOW, "IN_FLIGHT"),
        (Status.SCHEDULED, NOW + 60_000, "IN_FLIGHT"),
    ],
)
def test_not_cancelable(status: Status, lease: int | None, reason: str) -> None:
    with pytest.raises(PreconditionFailed) as caught:
        judge_cancel("m1", status, lease, NOW)
    assert caught.value.kind == reason
    assert "m1" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "expires", "validity", "expected"),
    [
        (Status.FAILED, None, None, Requeue(None)),
        (Status.UNDELIVERED, NOW + 5, None, Requeue(NOW + 5)),
        (Status.EXPIRED, NOW, None, Skip("its validity has ended; pass validity to extend")),
        (Status.EXPIRED, NOW - 1, 30_000, Requeue(NOW + 30_000)),
        (Status.FAILED, NOW + 5, 30_000, Requeue(NOW + 5)),  # still valid: kept
        (Status.DELIVERED, None, None, Skip("status DELIVERED is not retryable")),
        (Status.PENDING, None, 30_000, Skip("status PENDING is not retryable")),
    ],
)
def test_requeue(
    status: Status, expires: int | None, validity: int | None, expected: Requeue | Skip
) -> None:
    assert judge_requeue(status, expires, NOW, validity) == expected
