"""What an operator may do to a message: cancel it, or put it back in the outbox.

Pure rules over a message's state; storage reads the state under a lock, asks here,
and writes what the answer says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from notifier.domain.errors import PreconditionFailed
from notifier.domain.model import Status

RETRYABLE = frozenset({Status.FAILED, Status.UNDELIVERED, Status.EXPIRED})
"""What RetryMessages re-queues: sends that ended without reaching the recipient."""


class Cancel(enum.Enum):
    NOW = "now"  # cancel it
    ALREADY = "already"  # it is canceled: answer as if canceled now (idempotent)


def judge_cancel(
    message_id: str, status: Status, lease_expires_at_ms: int | None, now_ms: int
) -> Cancel:
    """Only a message Twilio does not have, and that no dispatcher is handing over right
    now, can be canceled; raises PreconditionFailed otherwise."""
    if status is Status.CANCELED:
        return Cancel.ALREADY
    if status.with_twilio or status.is_terminal:
        raise PreconditionFailed(
            message_id,
            "NOT_CANCELABLE",
            f"message {message_id} is {status.name}: "
            "only PENDING or SCHEDULED messages can be canceled",
        )
    if lease_expires_at_ms is not None and lease_expires_at_ms >= now_ms:
        raise PreconditionFailed(
            message_id, "IN_FLIGHT", f"message {message_id} is being handed to Twilio right now"
        )
    return Cancel.NOW


@dataclass(frozen=True, slots=True)
class Requeue:
    expires_at_ms: int | None  # the message's validity from now on


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


def judge_requeue(
    status: Status, expires_at_ms: int | None, now_ms: int, validity_ms: int | None
) -> Requeue | Skip:
    """Whether RetryMessages re-queues a message: only a retryable one, and one whose
    validity has not ended unless the operator grants a new one (``validity_ms``)."""
    if status not in RETRYABLE:
        return Skip(f"status {status.value.upper()} is not retryable")
    if expires_at_ms is not None and expires_at_ms <= now_ms:
        if validity_ms is None:
            return Skip("its validity has ended; pass validity to extend")
        return Requeue(now_ms + validity_ms)
    return Requeue(expires_at_ms)
