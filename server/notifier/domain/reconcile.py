"""Reconciliation: what to do about a message whose status callbacks did not come.

Twilio does not retry a status callback that failed, so a message Twilio holds can stay
QUEUED or SENT here forever. The reconciler fetches such a message from Twilio and
reports what it finds through the same rule as a callback (``domain.reports``). These are
its rules, pure: which messages wait for news, when to fetch again, when to give up, and
what an error on the fetch means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from notifier.domain.delivery import ErrorKind, classify
from notifier.domain.model import EventSource, Status, StatusReport

AWAITING_OUTCOME = (Status.QUEUED, Status.ACCEPTED, Status.SENDING, Status.SENT)
"""Statuses of a message Twilio holds whose outcome is still unknown. DELIVERED is an
outcome: a WhatsApp read receipt may never come (the recipient turned them off), so a
delivered message is never fetched for it."""

# Fetch k (k = 1, 2, ...) comes this many "reconcile after" periods after the last news:
# with the default 10 minutes, after 10 min, 30 min, 2 h and 6 h; then three times the
# previous gap each time (18 h, 54 h, ...), until the give-up time.
_SCHEDULE = (1, 3, 12, 36)
_GROWTH = 3


class Unconfirmed(enum.StrEnum):
    """Why the reconciler stopped fetching a message that is still not final."""

    GAVE_UP = "gave_up"  # no final status within the give-up time
    NOT_FOUND = "not_found"  # Twilio has no such message any more (deleted there)


def fetch_offset(fetch_number: int) -> int:
    """When fetch ``fetch_number`` (1-based) is due, in "reconcile after" periods counted
    from the message's last news."""
    if fetch_number < 1:
        raise ValueError("fetch numbers start at 1")
    if fetch_number <= len(_SCHEDULE):
        return _SCHEDULE[fetch_number - 1]
    return int(_SCHEDULE[-1] * _GROWTH ** (fetch_number - len(_SCHEDULE)))


def next_fetch_at(last_news_ms: int, fetches_done: int, after_ms: int) -> int:
    """When the next fetch of a message is due, given the fetches already made since
    ``last_news_ms`` (its last status change)."""
    return last_news_ms + fetch_offset(fetches_done + 1) * after_ms


def gives_up(last_news_ms: int, now_ms: int, give_up_ms: int) -> bool:
    """Whether a message without news since ``last_news_ms`` is past fetching: it is then
    counted as unconfirmed, and stays in its status (never delivered, never failed)."""
    return now_ms - last_news_ms >= give_up_ms


class FetchVerdict(enum.StrEnum):
    """What an error on a fetch means (Twilio's errors classified as for sends)."""

    BACK_OFF = "back_off"  # 429, 5xx, a timeout, no connection: try at the next time
    NOT_FOUND = "not_found"  # 404: deleted at Twilio; recorded, never fetched again
    STOP = "stop"  # 401 / 20003: our credentials are wrong; stop reconciling


def judge_fetch_error(http_status: int | None, code: int | None) -> FetchVerdict:
    """The verdict on a failed fetch from its HTTP status and Twilio error code. A fetch
    changes nothing at Twilio, so even an ambiguous answer is simply tried later."""
    if http_status == 404 or code == 20404:
        return FetchVerdict.NOT_FOUND
    if http_status in (401, 403) or code == 20003:
        return FetchVerdict.STOP
    if http_status is None:  # no answer: timeout or connection
        return FetchVerdict.BACK_OFF
    kind = classify(http_status, code)
    return FetchVerdict.STOP if kind is ErrorKind.PERMANENT else FetchVerdict.BACK_OFF


@dataclass(frozen=True, slots=True)
class Candidate:
    """A message to fetch: Twilio holds it, its outcome is unknown, no news for a while."""

    message_id: str
    twilio_sid: str
    status: Status
    last_news_ms: int
    fetches: int


@dataclass(frozen=True, slots=True)
class FetchState:
    """A message's fetch state after a fetch: the count since its last news, when the
    next fetch is due (None: at the usual time after its next news), and why fetching
    stopped (None: it goes on). It holds only while the message's last news is still
    ``news_ms`` (the one the fetch was planned from): news since, a callback that came
    while the fetch was under way, starts the schedule again instead."""

    message_id: str
    news_ms: int
    fetches: int
    next_at_ms: int | None
    outcome: Unconfirmed | None = None


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """A message as Twilio's API shows it (``GET …/Messages/{Sid}.json``)."""

    sid: str
    status: str  # Twilio's word, e.g. "delivered"
    error_code: int | None = None
    error_message: str | None = None
    date_sent_ms: int | None = None


def reports_from(fetched: FetchedMessage, message_id: str) -> list[StatusReport]:
    """The reports a fetch makes, in order; none for a status Notifier does not know.

    A message found past "sent" also reports "sent" at Twilio's ``date_sent``, as its lost
    "sent" callback would have: that dates the step (the delivery time needs it); the
    rule drops it as a duplicate when the callback did come.
    """
    try:
        status = Status(fetched.status)
    except ValueError:
        return []
    reports = []
    if status in (Status.SENT, Status.DELIVERED, Status.READ, Status.UNDELIVERED):
        reports.append(_report(fetched, message_id, Status.SENT, fetched.date_sent_ms))
    if status is not Status.SENT:
        errors = status in (Status.FAILED, Status.UNDELIVERED)
        reports.append(_report(fetched, message_id, status, None, with_error=errors))
    return reports


def _report(
    fetched: FetchedMessage,
    message_id: str,
    status: Status,
    at_ms: int | None,
    *,
    with_error: bool = False,
) -> StatusReport:
    return StatusReport(
        status,
        fetched.sid,
        message_id=message_id,
        error_code=fetched.error_code if with_error else None,
        error_message=fetched.error_message if with_error else None,
        source=EventSource.RECONCILE,
        occurred_at_ms=at_ms,
    )
