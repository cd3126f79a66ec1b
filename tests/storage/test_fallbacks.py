"""The SMS fallback is stored with the failure that calls for it, exactly once, whichever
way the failure is learned (Twilio's refusal, a callback, a fetch; repeated, or at the
same time from two writers); a 63024 marks the number until an inbound message clears
it. On real SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from notifier.domain.errors import PreconditionFailed
from notifier.domain.inbound import Consent, InboundMessage
from notifier.domain.metrics import MetricsQuery
from notifier.domain.model import (
    AttemptRecord,
    Channel,
    EventSource,
    NewMessage,
    Status,
    StatusReport,
    Transition,
)
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from tests.support.databases import TestDb

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TO = "+14155550100"


@pytest.fixture
def repo(db: Database) -> Repository:
    return Repository(db)


async def _queued(repo: Repository, sid: str, *, fallback: bool = True, to: str = TO) -> str:
    message = NewMessage(to=to, channel=Channel.WHATSAPP, body="hi", fallback_sms=fallback)
    accepted = await repo.add_message(message, caller="c", request_hash=None, key_ttl_ms=1)
    mid = accepted.message.id
    attempt = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
    await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=sid))
    return mid


def _fallbacks(database: TestDb, mid: str) -> list[tuple[object, ...]]:
    return database.rows(
        "SELECT channel, to_addr, body, status, fallback_reason, caller FROM messages "
        "WHERE fallback_of = ?",
        mid,
    )


def _failed(sid: str, code: int, source: EventSource = EventSource.CALLBACK) -> StatusReport:
    return StatusReport(Status.FAILED, sid, error_code=code, source=source)


async def test_a_refused_send_stores_its_sms_in_the_same_write_once(
    repo: Repository, database: TestDb
) -> None:
    accepted = await repo.add_message(
        NewMessage(to=TO, channel=Channel.WHATSAPP, body="hi", fallback_sms=True),
        caller="c",
        request_hash=None,
        key_ttl_ms=1,
    )
    mid = accepted.message.id
    failed = Transition(Status.FAILED, error_code=63003, error_message="not found")
    attempt = AttemptRecord(1, 2, "permanent", 400, error_code=63003)
    await repo.record_attempts([(mid, attempt, failed), (mid, attempt, failed)])
    await repo.record_attempt(mid, attempt, failed)  # the write retried: nothing more
    assert _fallbacks(database, mid) == [("sms", TO, "hi", "pending", "error 63003", "c")]
    delivery = await repo.get_delivery(message_id=mid)
    assert delivery.message.fallback_id is not None
    assert delivery.message.fallback_status is Status.PENDING
    sms = await repo.get_delivery(message_id=delivery.message.fallback_id)
    assert (sms.message.fallback_of, sms.message.channel) == (mid, Channel.SMS)


async def test_callbacks_and_fetches_of_one_failure_make_one_sms(
    repo: Repository, db: Database, database: TestDb
) -> None:
    sid = "SM" + "1" * 32
    mid = await _queued(repo, sid)
    other = Repository(db)  # a second writer, as a sidecar beside the reconciler
    await asyncio.gather(
        repo.apply_report(_failed(sid, 63032)),
        other.apply_report(_failed(sid, 63032, EventSource.RECONCILE)),
        other.apply_report(_failed(sid, 63032)),
    )
    await repo.apply_report(_failed(sid, 63032))
    assert [(r[0], r[4]) for r in _fallbacks(database, mid)] == [("sms", "error 63032")]


@pytest.mark.parametrize("code", [63016, 30008])
async def test_other_codes_get_no_sms(repo: Repository, database: TestDb, code: int) -> None:
    sid = f"SM{code:032d}"
    mid = await _queued(repo, sid)
    await repo.apply_report(_failed(sid, code))
    assert _fallbacks(database, mid) == []


async def test_no_sms_after_delivered_nor_without_asking_nor_to_an_opted_out_number(
    repo: Repository, database: TestDb
) -> None:
    delivered = await _queued(repo, "SM" + "2" * 32)
    await repo.apply_report(StatusReport(Status.DELIVERED, "SM" + "2" * 32))
    await repo.apply_report(StatusReport(Status.UNDELIVERED, "SM" + "2" * 32, error_code=63024))
    unasked = await _queued(repo, "SM" + "3" * 32, fallback=False, to="+14155550101")
    await repo.apply_report(_failed("SM" + "3" * 32, 63024))
    stopped = await _queued(repo, "SM" + "4" * 32, to="+14155550102")
    stop = InboundMessage(
        "SM" + "5" * 32, "+14155550102", "whatsapp:+1415523888", "whatsapp", "STOP"
    )
    await repo.record_inbound(stop, Consent.OPT_OUT)
    await repo.apply_report(_failed("SM" + "4" * 32, 63024))
    for mid in (delivered, unasked, stopped):
        assert _fallbacks(database, mid) == [], mid


async def test_63024_marks_the_number_until_it_writes_on_whatsapp(repo: Repository) -> None:
    sid = "SM" + "6" * 32
    await _queued(repo, sid, fallback=False)
    await repo.apply_report(_failed(sid, 63024))
    plain = NewMessage(to=TO, channel=Channel.WHATSAPP, body="again")
    with pytest.raises(PreconditionFailed) as refused:
        await repo.add_message(plain, caller="c", request_hash=None, key_ttl_ms=1)
    assert refused.value.kind == "NOT_ON_WHATSAPP"
    sms = NewMessage(to=TO, channel=Channel.SMS, body="by sms")
    assert (await repo.add_message(sms, caller="c", request_hash=None, key_ttl_ms=1)).message
    straight = NewMessage(
        to=TO, channel=Channel.WHATSAPP, body="again", fallback_sms=True, tags=("t",)
    )
    accepted = await repo.add_message(straight, caller="c", request_hash=None, key_ttl_ms=1)
    assert (accepted.message.status, accepted.message.error_code) == (Status.FAILED, 63024)
    got = await repo.get_delivery(message_id=accepted.message.id)
    assert got.message.fallback_id is not None
    fallback = (await repo.get_delivery(message_id=got.message.fallback_id)).message
    assert (fallback.channel, fallback.fallback_reason, fallback.tags) == (
        Channel.SMS,
        "not on WhatsApp",
        ("t",),
    )
    hello = InboundMessage("SM" + "7" * 32, TO, "whatsapp:+14155238886", "whatsapp", "hello")
    await repo.record_inbound(hello, None)
    again = await repo.add_message(plain, caller="c", request_hash=None, key_ttl_ms=1)
    assert again.message.status is Status.PENDING


async def test_fallback_counts_in_getmetrics_survive_the_purge(
    repo: Repository, database: TestDb
) -> None:
    """GetMetrics' fallbacks and fallbacks_delivered come from the rollups (issue 15), so
    retention deleting the messages leaves them as they were."""
    failed = Transition(Status.FAILED, error_code=63003, error_message="not found")
    refused = AttemptRecord(1, 2, "permanent", 400, error_code=63003)
    sms_ids = []
    for _ in range(2):
        message = NewMessage(to=TO, channel=Channel.WHATSAPP, body="hi", fallback_sms=True)
        accepted = await repo.add_message(message, caller="c", request_hash=None, key_ttl_ms=1)
        await repo.record_attempt(accepted.message.id, refused, failed)
        delivery = await repo.get_delivery(message_id=accepted.message.id)
        assert delivery.message.fallback_id is not None
        sms_ids.append(delivery.message.fallback_id)
    sid = "SM" + "5" * 32
    sent = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
    await repo.record_attempt(sms_ids[0], sent, Transition(Status.QUEUED, twilio_sid=sid))
    await repo.apply_report(StatusReport(Status.DELIVERED, sid, message_id=sms_ids[0]))
    hour = 3_600_000
    now = int(time.time() * 1000)
    window = MetricsQuery(start_ms=(now // hour - 1) * hour, end_ms=(now // hour + 2) * hour)
    before = await repo.metrics(window, now_ms=now)
    assert (before.fallbacks, before.fallbacks_delivered) == (2, 1)
    assert (
        await repo.metrics(replace(window, channel=Channel.WHATSAPP), now_ms=now)
    ).fallbacks == 0
    while await repo.fold_rollups(3):
        pass
    for table in ("message_tags", "status_events", "delivery_attempts", "idempotency_keys"):
        await asyncio.to_thread(database.execute, f"DELETE FROM {table}")  # noqa: S608
    await asyncio.to_thread(database.execute, "UPDATE messages SET fallback_of = NULL")
    await asyncio.to_thread(database.execute, "DELETE FROM messages")
    after = await repo.metrics(window, now_ms=now)
    assert (after.fallbacks, after.fallbacks_delivered) == (2, 1)
    # The rest of the window's figures too; only the outbox's "now" follows the rows.
    assert after == replace(before, queue_depth=0, oldest_pending_age_ms=0)
