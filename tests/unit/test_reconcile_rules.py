"""domain.reconcile: the fetch schedule, the give-up, what a fetch error means and what
a fetch reports; and domain.reports.judge_report for reports from a fetch. Tables."""

from __future__ import annotations

import pytest

from notifier.domain.model import CallbackResult, EventSource, Status, StatusReport
from notifier.domain.reconcile import (
    FetchedMessage,
    FetchVerdict,
    fetch_offset,
    gives_up,
    judge_fetch_error,
    next_fetch_at,
    reports_from,
)
from notifier.domain.reports import PastEvent, ReportEffect, ReportTarget, judge_report

SID, OTHER = "SM" + "a" * 32, "SM" + "b" * 32
MINUTE_MS = 60_000
TEN_MINUTES = 10 * MINUTE_MS
RC, CB = EventSource.RECONCILE, EventSource.CALLBACK


@pytest.mark.parametrize(
    ("fetches_done", "due_after_minutes"),
    [
        (0, 10),  # first fetch: 10 min without news
        (1, 30),
        (2, 120),  # 2 h
        (3, 360),  # 6 h
        (4, 18 * 60),  # then three times the previous gap
        (5, 54 * 60),
    ],
)
def test_fetches_back_off_per_message(fetches_done: int, due_after_minutes: int) -> None:
    last_news = 1_000_000
    assert next_fetch_at(last_news, fetches_done, TEN_MINUTES) == (
        last_news + due_after_minutes * MINUTE_MS
    )


def test_the_schedule_scales_with_the_interval_and_starts_at_one() -> None:
    assert [fetch_offset(n) for n in range(1, 7)] == [1, 3, 12, 36, 108, 324]
    assert next_fetch_at(0, 1, 2_000) == 6_000  # a 2 s interval: second fetch at 6 s
    with pytest.raises(ValueError, match="start at 1"):
        fetch_offset(0)


@pytest.mark.parametrize(
    ("silent_hours", "gives"),
    [(71.9, False), (72, True), (100, True)],
)
def test_give_up_after_the_give_up_time(silent_hours: float, gives: bool) -> None:
    assert gives_up(0, int(silent_hours * 3600_000), 72 * 3600_000) is gives


@pytest.mark.parametrize(
    ("http_status", "code", "verdict"),
    [
        (404, 20404, FetchVerdict.NOT_FOUND),
        (404, None, FetchVerdict.NOT_FOUND),
        (401, 20003, FetchVerdict.STOP),
        (401, None, FetchVerdict.STOP),
        (429, 20429, FetchVerdict.BACK_OFF),
        (500, 20500, FetchVerdict.BACK_OFF),  # ambiguous for a send; a fetch changes nothing
        (503, 20503, FetchVerdict.BACK_OFF),
        (502, None, FetchVerdict.BACK_OFF),
        (None, None, FetchVerdict.BACK_OFF),  # timeout or no connection
        (400, 21211, FetchVerdict.STOP),  # a permanent refusal will not get better
    ],
)
def test_fetch_errors_are_classified_like_sends(
    http_status: int | None, code: int | None, verdict: FetchVerdict
) -> None:
    assert judge_fetch_error(http_status, code) is verdict


def _fetched(status: str, code: int | None = None) -> FetchedMessage:
    return FetchedMessage(SID, status, code, "Unreachable" if code else None, 1_700_000_000_000)


@pytest.mark.parametrize(
    ("twilio_status", "reported"),
    [
        ("queued", [(Status.QUEUED, None, None)]),
        ("sent", [(Status.SENT, None, 1_700_000_000_000)]),
        ("delivered", [(Status.SENT, None, 1_700_000_000_000), (Status.DELIVERED, None, None)]),
        ("read", [(Status.SENT, None, 1_700_000_000_000), (Status.READ, None, None)]),
        ("failed", [(Status.FAILED, 30003, None)]),
        (
            "undelivered",
            [(Status.SENT, None, 1_700_000_000_000), (Status.UNDELIVERED, 30003, None)],
        ),
        ("partially_delivered", []),  # a status Notifier does not know: nothing reported
    ],
)
def test_a_fetch_reports_what_lost_callbacks_would_have(
    twilio_status: str, reported: list[tuple[Status, int | None, int | None]]
) -> None:
    code = 30003 if twilio_status in ("failed", "undelivered") else None
    reports = reports_from(_fetched(twilio_status, code), "01JZ")
    assert [(r.status, r.error_code, r.occurred_at_ms) for r in reports] == reported
    assert all(r.source is RC and r.message_id == "01JZ" for r in reports)


def _report(status: Status, sid: str = SID) -> StatusReport:
    return StatusReport(status, sid, source=RC)


@pytest.mark.parametrize(
    ("report", "target", "history", "effect"),
    [
        pytest.param(
            _report(Status.DELIVERED),
            ReportTarget(Status.SENT, SID, frozenset({Status.SENT})),
            [PastEvent(Status.SENT, CB)],
            ReportEffect(
                CallbackResult.APPLIED, RC, new_status=Status.DELIVERED, stamp=Status.DELIVERED
            ),
            id="a fetch moves forward like a callback, under its own source",
        ),
        pytest.param(
            _report(Status.SENT),
            ReportTarget(Status.SENT, SID, frozenset({Status.SENT})),
            [PastEvent(Status.SENT, CB)],
            ReportEffect(CallbackResult.DUPLICATE, RC),
            id="what a callback already said is a duplicate",
        ),
        pytest.param(
            StatusReport(Status.SENT, SID),
            ReportTarget(Status.DELIVERED, SID, frozenset({Status.SENT, Status.DELIVERED})),
            [PastEvent(Status.SENT, RC), PastEvent(Status.DELIVERED, RC)],
            ReportEffect(CallbackResult.DUPLICATE, CB),
            id="a late callback after a fetch said the same: duplicate",
        ),
        pytest.param(
            _report(Status.QUEUED),
            ReportTarget(Status.QUEUED, SID),
            [],
            ReportEffect(CallbackResult.DUPLICATE, RC),
            id="a fetch finding it where it is records nothing",
        ),
        pytest.param(
            _report(Status.SENT),
            ReportTarget(Status.READ, SID, frozenset({Status.READ})),
            [PastEvent(Status.READ, CB)],
            ReportEffect(CallbackResult.RECORDED, RC, stamp=Status.SENT),
            id="never backwards: an older status is recorded and dates the step",
        ),
        pytest.param(
            _report(Status.DELIVERED, OTHER),
            ReportTarget(Status.SENT, SID),
            [],
            ReportEffect(CallbackResult.RECORDED, EventSource.OTHER_SEND),
            id="about another Twilio message: history only",
        ),
    ],
)
def test_a_fetch_goes_through_the_callback_rule(
    report: StatusReport, target: ReportTarget, history: list[PastEvent], effect: ReportEffect
) -> None:
    assert judge_report(report, target, history) == effect
