"""A 63049/63018 failure reported after acceptance re-queues the message in the write
that records the report: no SMS fallback, the attempt's outcome updated, the old send's
later reports kept apart from the new send. On real SQLite files and PostgreSQL."""

from __future__ import annotations

import pytest

from notifier.domain.model import (
    AttemptRecord,
    CallbackResult,
    Channel,
    NewMessage,
    Status,
    StatusReport,
    Transition,
)
from notifier.domain.retry import RetryPolicy
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from tests.support.databases import TestDb

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TO = "+14155550190"
OLD, NEW = "SM" + "1" * 32, "SM" + "2" * 32
NOW = 1_700_000_000_000


@pytest.fixture
def repo(db: Database) -> Repository:
    return Repository(db, lambda: NOW, retry=RetryPolicy(max_attempts=3))


async def _queued(repo: Repository) -> str:
    message = NewMessage(to=TO, channel=Channel.WHATSAPP, body="hi", fallback_sms=True)
    accepted = await repo.add_message(message, caller="c", request_hash=None, key_ttl_ms=1)
    mid = accepted.message.id
    attempt = AttemptRecord(1, 2, "accepted", 201, twilio_sid=OLD)
    await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=OLD))
    return mid


def _report(status: Status, sid: str, mid: str, code: int | None = None) -> StatusReport:
    return StatusReport(status, sid, message_id=mid, error_code=code)


@pytest.mark.parametrize(("code", "outcome"), [(63049, "deferred"), (63018, "rate_limited")])
async def test_a_deferral_report_requeues_without_a_fallback(
    repo: Repository, database: TestDb, code: int, outcome: str
) -> None:
    mid = await _queued(repo)
    await repo.apply_report(_report(Status.SENT, OLD, mid))
    result = await repo.apply_report(_report(Status.FAILED, OLD, mid, code))
    assert result == (CallbackResult.APPLIED, mid)
    (row,) = database.rows(
        "SELECT status, twilio_sid, error_code, next_attempt_at, sent_at FROM messages "
        "WHERE id = ?",
        mid,
    )
    assert row[:3] == ("pending", None, code)
    assert row[3] > NOW  # due later
    assert row[4] is None  # the new send has no step times yet
    assert database.rows("SELECT id FROM messages WHERE fallback_of = ?", mid) == []
    attempts = database.rows(
        "SELECT outcome, error_code FROM delivery_attempts WHERE message_id = ?", mid
    )
    assert attempts == [(outcome, code)]
    history = database.rows(
        "SELECT status, source, applied FROM status_events WHERE message_id = ? ORDER BY id",
        mid,
    )
    assert history[-2:] == [("failed", "callback", 0), ("pending", "deferral", 1)]


async def test_the_old_sends_reports_move_neither_the_requeued_message_nor_the_new_send(
    repo: Repository, database: TestDb
) -> None:
    mid = await _queued(repo)
    await repo.apply_report(_report(Status.FAILED, OLD, mid, 63049))
    for status in (Status.FAILED, Status.SENT):  # a repeat and a late one, old SID
        assert (await repo.apply_report(_report(status, OLD, mid, 63049)))[0] is (
            CallbackResult.RECORDED
        )
    state = "SELECT status, twilio_sid FROM messages WHERE id = ?"
    assert database.rows(state, mid) == [("pending", None)]
    attempt = AttemptRecord(3, 4, "accepted", 201, twilio_sid=NEW)
    await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=NEW))
    await repo.apply_report(_report(Status.DELIVERED, OLD, mid))  # old SID: history only
    assert database.rows(state, mid) == [("queued", NEW)]
    for status in (Status.SENT, Status.DELIVERED):  # the new send's, not duplicates
        assert (await repo.apply_report(_report(status, NEW, mid)))[0] is CallbackResult.APPLIED
    assert database.rows(state, mid) == [("delivered", NEW)]


async def test_a_deferral_with_the_budget_spent_ends_failed_without_an_sms(
    db: Database, database: TestDb
) -> None:
    repo = Repository(db, lambda: NOW, retry=RetryPolicy(max_attempts=1))  # no validity
    mid = await _queued(repo)
    await repo.apply_report(_report(Status.FAILED, OLD, mid, 63049))
    assert database.rows("SELECT status, error_code FROM messages WHERE id = ?", mid) == [
        ("failed", 63049)
    ]
    assert database.rows("SELECT id FROM messages WHERE fallback_of = ?", mid) == []


async def test_a_deferral_report_before_the_send_is_recorded_requeues_when_it_is(
    repo: Repository, database: TestDb
) -> None:
    message = NewMessage(to=TO, channel=Channel.WHATSAPP, body="hi")
    accepted = await repo.add_message(message, caller="c", request_hash=None, key_ttl_ms=1)
    mid = accepted.message.id
    await repo.apply_report(_report(Status.FAILED, OLD, mid, 63049))  # Twilio was quicker
    state = "SELECT status, twilio_sid, error_code FROM messages WHERE id = ?"
    assert database.rows(state, mid) == [("failed", OLD, 63049)]
    attempt = AttemptRecord(1, 2, "accepted", 201, twilio_sid=OLD)
    await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=OLD))
    assert database.rows(state, mid) == [("pending", None, 63049)]
    attempts = database.rows(
        "SELECT outcome, twilio_sid FROM delivery_attempts WHERE message_id = ?", mid
    )
    assert attempts == [("deferred", OLD)]
    last = database.rows(
        "SELECT status, source FROM status_events WHERE message_id = ? ORDER BY id DESC", mid
    )[0]
    assert last == ("pending", "deferral")
    assert (await repo.apply_report(_report(Status.FAILED, OLD, mid, 63049)))[0] is (
        CallbackResult.RECORDED  # the old send's repeat: history only
    )
    assert database.rows(state, mid) == [("pending", None, 63049)]


async def test_a_message_the_reconciler_gave_up_on_is_fetched_again_after_a_deferral(
    repo: Repository, database: TestDb
) -> None:
    """A 63049 that arrives after the reconciler gave up (a late callback) starts a new
    send: its outcome is a new question, so the give-up mark must not stay."""
    mid = await _queued(repo)
    assert await repo.give_up_reconciling(now_ms=NOW + 10, give_up_ms=1) == 1
    await repo.apply_report(_report(Status.FAILED, OLD, mid, 63049))
    await repo.record_attempt(
        mid,
        AttemptRecord(2, 2, "accepted", 201, twilio_sid=NEW),
        Transition(Status.QUEUED, twilio_sid=NEW),
    )
    later = await repo.reconcile_candidates(now_ms=NOW + 3_600_000, after_ms=1, limit=10)
    assert [(c.message_id, c.twilio_sid) for c in later] == [(mid, NEW)]
