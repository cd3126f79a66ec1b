"""domain.reports.judge_report: what a status callback does to a message, as a table."""

from __future__ import annotations

import pytest

from notifier.domain.model import CallbackResult, EventSource, Status, StatusReport
from notifier.domain.reports import PastEvent, ReportEffect, ReportTarget, judge_report

SID, OTHER = "SM" + "a" * 32, "SM" + "b" * 32
S = Status
CB, OP, OTHER_SEND = EventSource.CALLBACK, EventSource.OPERATOR, EventSource.OTHER_SEND
DEFERRAL = EventSource.DEFERRAL
APPLIED, RECORDED, DUPLICATE = (
    CallbackResult.APPLIED,
    CallbackResult.RECORDED,
    (CallbackResult.DUPLICATE),
)


def past(*events: tuple[Status, EventSource]) -> list[PastEvent]:
    return [PastEvent(status, source) for status, source in events]


CASES = [
    pytest.param(
        S.SENT,
        ReportTarget(S.QUEUED, SID),
        [],
        ReportEffect(APPLIED, CB, new_status=S.SENT, stamp=S.SENT),
        id="forward move applied, first sent time stamped",
    ),
    pytest.param(
        S.DELIVERED,
        ReportTarget(S.READ, SID, frozenset({S.SENT, S.READ})),
        [],
        ReportEffect(RECORDED, CB, stamp=S.DELIVERED),
        id="late delivered after read: recorded, status kept, delivered time still stamped",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.DELIVERED, SID, frozenset({S.SENT, S.DELIVERED})),
        [],
        ReportEffect(RECORDED, CB),
        id="late sent with a sent time already: recorded, nothing stamped",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.SENT, SID, frozenset({S.SENT})),
        past((S.SENT, CB)),
        ReportEffect(DUPLICATE, CB),
        id="same status again in this send: duplicate",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.QUEUED, SID),
        past((S.SENT, CB), (S.PENDING, OP)),
        ReportEffect(APPLIED, CB, new_status=S.SENT, stamp=S.SENT),
        id="same status before a RetryMessages: a new send, not a duplicate",
    ),
    pytest.param(
        S.DELIVERED,
        ReportTarget(S.QUEUED, SID),
        past((S.DELIVERED, OTHER_SEND)),
        ReportEffect(APPLIED, CB, new_status=S.DELIVERED, stamp=S.DELIVERED),
        id="another send's callback with that status does not make this one a duplicate",
    ),
    pytest.param(
        S.DELIVERED,
        ReportTarget(S.QUEUED, OTHER),
        [],
        ReportEffect(RECORDED, OTHER_SEND),
        id="report about another Twilio message: history only",
    ),
    pytest.param(
        S.DELIVERED,
        ReportTarget(S.QUEUED, OTHER),
        past((S.DELIVERED, OTHER_SEND)),
        ReportEffect(DUPLICATE, OTHER_SEND),
        id="another send's callback twice: duplicate",
    ),
    pytest.param(
        S.QUEUED,
        ReportTarget(S.PENDING, None),
        [],
        ReportEffect(APPLIED, CB, adopt_sid=True, new_status=S.QUEUED),
        id="callback beats the dispatcher's record: the message takes the SID",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.QUEUED, SID),
        past((S.SENT, CB), (S.FAILED, CB), (S.PENDING, DEFERRAL)),
        ReportEffect(APPLIED, CB, new_status=S.SENT, stamp=S.SENT),
        id="same status before a re-queue after a deferral (63049): a new send",
    ),
    pytest.param(
        S.FAILED,
        ReportTarget(S.PENDING, None, earlier_sids=frozenset({SID})),
        past((S.FAILED, CB), (S.PENDING, DEFERRAL)),
        ReportEffect(RECORDED, OTHER_SEND),
        id="re-queued, new send not out yet: the old send's report is not adopted",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.PENDING, None, earlier_sids=frozenset({OTHER})),
        past((S.SENT, CB), (S.PENDING, DEFERRAL)),
        ReportEffect(APPLIED, CB, adopt_sid=True, new_status=S.SENT, stamp=S.SENT),
        id="re-queued: the new send's report beats the dispatcher's record and is adopted",
    ),
    pytest.param(
        S.SENT,
        ReportTarget(S.CANCELED, None),
        [],
        ReportEffect(RECORDED, CB, adopt_sid=True, stamp=S.SENT),
        id="nothing leaves a terminal status",
    ),
]


@pytest.mark.parametrize(("status", "target", "history", "expected"), CASES)
def test_judge_report(
    status: Status, target: ReportTarget, history: list[PastEvent], expected: ReportEffect
) -> None:
    assert judge_report(StatusReport(status, SID), target, history) == expected


@pytest.mark.parametrize(
    ("target", "sets_error"),
    [(ReportTarget(S.SENT, SID), True), (ReportTarget(S.READ, SID), False)],
    ids=["applied failure keeps its code", "ignored failure changes no error"],
)
def test_error_code_moves_only_with_the_status(target: ReportTarget, sets_error: bool) -> None:
    report = StatusReport(S.UNDELIVERED, SID, error_code=30003, error_message="Unreachable")
    assert judge_report(report, target, []).sets_error is sets_error


def test_a_duplicate_writes_nothing() -> None:
    effect = judge_report(StatusReport(S.SENT, SID), ReportTarget(S.SENT, SID), past((S.SENT, CB)))
    assert not effect.writes
