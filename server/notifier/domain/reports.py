"""What a status report (Twilio's status callback) does to a message: one rule, no I/O.

Storage applies callbacks one by one (PostgreSQL, under a row lock) or many at once
(SQLite, under its single writer); both ask ``judge_report`` what a report does, so the
two paths cannot drift apart. The rule:

- A report about another Twilio message than the message's current one (an earlier
  send of a re-queued message, or a copy Twilio took on an ambiguous attempt) goes into
  the history under its own source and changes nothing: judged together with the
  current send's callbacks, it made them look like duplicates and left the message
  stuck at queued.
  A re-queued message waiting for its new send has no SID: a report naming one of its
  earlier sends' SIDs is still about another send, not one to adopt.
- A report whose status was already reported for the current send (since the last
  RetryMessages or re-queue after a deferral, each of which starts a new send) is a
  duplicate: nothing is written.
- Otherwise it is recorded, and applied only if it moves the message forward
  (``moves_forward``): a late "sent" never undoes "read".
- The first time the current send reaches sent, delivered or read is stamped even when
  the report arrives out of order: the step happened.
- A fetch from Twilio (source RECONCILE, when callbacks did not come) is judged the same
  way, as one more reporter of the current send: a status a callback already reported
  is a duplicate of it and the other way round. A fetch that finds the message where
  it already is records nothing (fetches repeat; callbacks never report the start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from notifier.domain.model import (
    CallbackResult,
    EventSource,
    Status,
    StatusReport,
    moves_forward,
)

STAMPED = frozenset({Status.SENT, Status.DELIVERED, Status.READ})
"""Statuses whose first-reached time a message keeps (its sent, delivered, read times)."""

HISTORY_SOURCES = (
    EventSource.OPERATOR,
    EventSource.DEFERRAL,
    EventSource.CALLBACK,
    EventSource.OTHER_SEND,
    EventSource.RECONCILE,
)
"""The past events the rule looks at; storage reads only these."""

_CURRENT_SEND = frozenset({EventSource.CALLBACK, EventSource.RECONCILE})
"""Sources that report on the current send: each repeats what the other said."""

NEW_SEND = frozenset({EventSource.OPERATOR, EventSource.DEFERRAL})
"""Sources of the events that re-queue a message: a new send (a new Twilio SID) begins."""


@dataclass(frozen=True, slots=True)
class ReportTarget:
    """The message a report is about, as the rule needs to see it."""

    status: Status
    twilio_sid: str | None
    stamped: frozenset[Status] = frozenset()  # which of STAMPED already have a time
    earlier_sids: frozenset[str] = frozenset()  # SIDs of earlier sends (read when SID is None)


@dataclass(frozen=True, slots=True)
class PastEvent:
    status: Status
    source: EventSource


@dataclass(frozen=True, slots=True)
class ReportEffect:
    result: CallbackResult  # APPLIED, RECORDED or DUPLICATE
    source: EventSource  # the report's (CALLBACK, RECONCILE), or OTHER_SEND
    adopt_sid: bool = False  # the message had no SID yet: it takes the report's
    new_status: Status | None = None  # set when the report is applied
    sets_error: bool = False  # the applied report carries an error code
    stamp: Status | None = None  # the status whose first-reached time becomes now

    @property
    def writes(self) -> bool:
        return self.result is not CallbackResult.DUPLICATE


def judge_report(
    report: StatusReport, target: ReportTarget, history: Sequence[PastEvent]
) -> ReportEffect:
    """What ``report`` does to ``target``, given its past ``history`` (oldest first, only
    events of HISTORY_SOURCES)."""
    same_send = report.twilio_sid == target.twilio_sid or (
        target.twilio_sid is None and report.twilio_sid not in target.earlier_sids
    )
    source = report.source if same_send else EventSource.OTHER_SEND
    family = _CURRENT_SEND if same_send else frozenset({source})
    if any(e.source in family and e.status is report.status for e in _current_send(history)):
        return ReportEffect(CallbackResult.DUPLICATE, source)
    if report.source is EventSource.RECONCILE and same_send and report.status is target.status:
        return ReportEffect(CallbackResult.DUPLICATE, source)
    applies = same_send and moves_forward(target.status, report.status)
    stamps = same_send and report.status in STAMPED and report.status not in target.stamped
    return ReportEffect(
        CallbackResult.APPLIED if applies else CallbackResult.RECORDED,
        source,
        adopt_sid=same_send and target.twilio_sid is None,
        new_status=report.status if applies else None,
        sets_error=applies and report.error_code is not None,
        stamp=report.status if stamps else None,
    )


def _current_send(history: Sequence[PastEvent]) -> Sequence[PastEvent]:
    """The events since the last re-queue (each starts a new Twilio message)."""
    start = max((i + 1 for i, e in enumerate(history) if e.source in NEW_SEND), default=0)
    return history[start:]
