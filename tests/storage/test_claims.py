"""Claims counted for the poison guard, Twilio's SID kept whatever it is, and one refused
result retried alone (issue 13), on real SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from notifier.dispatch.recorder import AttemptRecorder
from notifier.domain.bulk import BULK_PRIORITY
from notifier.domain.model import Accepted, AttemptRecord, Channel, NewMessage, Status, Transition
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from tests.support.poison import refuse_accepted_attempts
from tests.support.webhooks import queued_message

pytestmark = pytest.mark.backends("sqlite", "postgresql")

SID = "SM" + "ab" * 16


@pytest.fixture
def repo(db: Database) -> Repository:
    return Repository(db)


def _accepted(sid: str) -> tuple[AttemptRecord, Transition]:
    return AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid), Transition(
        Status.QUEUED, twilio_sid=sid
    )


async def test_claims_count_until_an_outcome_and_unused_leases_do_not_count(
    repo: Repository,
) -> None:
    mid = await queued_message(repo, sid=None)
    (first,) = await repo.claim_due("w", limit=5, lease_ms=0)
    assert first.claims == 1
    await asyncio.sleep(0.01)  # the zero-length lease runs out
    (second,) = await repo.claim_due("w", limit=5, lease_ms=60_000)
    assert second.claims == 2  # a takeover: the earlier lease ran out without an outcome
    assert await repo.release("w", [mid]) == 1
    (third,) = await repo.claim_due("w", limit=5, lease_ms=60_000)
    assert third.claims == 2  # the released claim was never used: not counted
    await repo.record_attempt(mid, *_accepted(SID))
    delivery = await repo.get_delivery(message_id=mid)
    assert delivery.message.claims == 0


async def test_a_message_claimed_too_often_is_failed_in_the_claim(repo: Repository) -> None:
    mid = await queued_message(repo, sid=None)
    for _ in range(2):
        await repo.claim_due("w", limit=5, lease_ms=0)
        await asyncio.sleep(0.01)
    (failed,) = await repo.claim_due("w", limit=5, lease_ms=60_000, max_claims=2)
    assert failed.status is Status.FAILED
    assert failed.error_message == (
        "delivery outcome could not be recorded after 2 claims; it may have been sent"
    )
    await asyncio.sleep(0.01)
    assert await repo.claim_due("w", limit=5, lease_ms=60_000, max_claims=2) == []
    delivery = await repo.get_delivery(message_id=mid)
    assert [a.outcome for a in delivery.attempts] == ["ambiguous"]
    assert delivery.events[-1].status is Status.FAILED


async def test_a_sid_held_by_another_message_is_kept_on_the_attempt(repo: Repository) -> None:
    first = await queued_message(repo, sid=SID)
    second = await queued_message(repo, sid=None)
    await repo.record_attempt(second, *_accepted(SID))  # no IntegrityError
    mine = await repo.get_delivery(message_id=second)
    assert mine.message.status is Status.QUEUED
    assert mine.message.twilio_sid is None
    (attempt,) = mine.attempts
    assert attempt.outcome == "accepted"
    assert attempt.error_message == (
        f"Twilio's SID {SID} is already held by message {first}; kept on this attempt"
    )
    assert (await repo.get_delivery(message_id=first)).message.twilio_sid == SID


async def test_two_messages_given_one_sid_in_one_batch_are_both_recorded(
    repo: Repository,
) -> None:
    a = await queued_message(repo, sid=None)
    b = await queued_message(repo, sid=None)
    await repo.record_attempts([(a, *_accepted(SID)), (b, *_accepted(SID))])
    statuses = [(await repo.get_delivery(message_id=m)).message for m in (a, b)]
    assert [m.status for m in statuses] == [Status.QUEUED, Status.QUEUED]
    assert [m.twilio_sid for m in statuses] == [SID, None]


async def test_a_result_the_database_refuses_fails_alone(repo: Repository, db: Database) -> None:
    good = await queued_message(repo, sid=None)
    bad = await queued_message(repo, sid=None)
    await refuse_accepted_attempts(db.writer, bad)
    recorder = AttemptRecorder(repo)
    outcomes = await asyncio.gather(
        recorder.record(bad, *_accepted("SM" + "01" * 16)),
        recorder.record(good, *_accepted("SM" + "02" * 16)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Exception)  # the dispatcher's failed claim
    assert outcomes[1] is None
    assert (await repo.get_delivery(message_id=good)).message.status is Status.QUEUED
    assert (await repo.get_delivery(message_id=bad)).message.status is Status.PENDING


async def test_a_claim_takes_single_sends_before_bulk_and_oldest_first(repo: Repository) -> None:
    """A campaign queued first still waits behind single sends; within each, the oldest
    goes first, and a claim smaller than the queue takes the head of that order."""

    async def queue(body: str, priority: int) -> str:
        message = NewMessage(to="+14155550100", channel=Channel.WHATSAPP, body=body)
        (outcome,) = await repo.add_messages(
            [(message, None)], caller="", key_ttl_ms=1, priority=priority
        )
        assert isinstance(outcome, Accepted)
        await asyncio.sleep(0.002)  # distinct due times
        return outcome.message.id

    bulk = [await queue(f"campaign {i}", BULK_PRIORITY) for i in range(2)]
    single = [await queue(f"single {i}", 0) for i in range(2)]
    (first,) = await repo.claim_due("w", limit=1, lease_ms=60_000)
    rest = await repo.claim_due("w", limit=5, lease_ms=60_000)
    assert [first.id, *(m.id for m in rest)] == [*single, *bulk]


async def _claimed_twice_and_fresh(repo: Repository) -> tuple[str, str]:
    """A message claimed twice with nothing recorded (poisoned at max_claims=2), and a
    message queued after it that was never claimed."""
    poisoned = await queued_message(repo, sid=None)
    for _ in range(2):
        await repo.claim_due("w", limit=5, lease_ms=0)
        await asyncio.sleep(0.01)  # the zero-length lease runs out
    return poisoned, await queued_message(repo, sid=None)


@pytest.mark.backends("postgresql")
async def test_a_quarantine_the_database_refuses_holds_up_no_healthy_message(
    repo: Repository, db: Database
) -> None:
    """PostgreSQL fails a message claimed too often after the claim's one statement: if
    that write fails, the healthy messages of the claim still go out now, and the
    poisoned one, unsent, is judged again by the next claim after its lease."""
    poisoned, healthy = await _claimed_twice_and_fresh(repo)
    await refuse_accepted_attempts(db.writer, poisoned, outcome="ambiguous")
    claimed = await repo.claim_due("w", limit=5, lease_ms=50, max_claims=2)
    assert [m.id for m in claimed] == [healthy]
    delivery = await repo.get_delivery(message_id=poisoned)
    assert delivery.message.status is Status.PENDING
    assert not delivery.attempts


@pytest.mark.backends("postgresql")
async def test_a_lease_lost_before_the_quarantine_leaves_the_message_to_its_new_holder(
    repo: Repository, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL fails a message claimed too often after the claim's one statement. If
    its lease ran out meanwhile and another claimer took it, the message is the other
    claimer's now: this claim neither fails it nor hands it out to be sent."""
    poisoned, healthy = await _claimed_twice_and_fresh(repo)
    quarantine = repo._quarantine

    async def after_a_thief(*args: Any) -> Any:
        async with db.writer.begin() as conn:  # the lease ran out; another replica took it
            await conn.execute(
                text("UPDATE messages SET lease_owner = 'thief' WHERE id = :id"), {"id": poisoned}
            )
        return await quarantine(*args)

    monkeypatch.setattr(repo, "_quarantine", after_a_thief)
    claimed = await repo.claim_due("w", limit=5, lease_ms=60_000, max_claims=2)
    assert [m.id for m in claimed] == [healthy]
    delivery = await repo.get_delivery(message_id=poisoned)
    assert delivery.message.status is Status.PENDING
    assert not delivery.attempts
    async with db.reader.connect() as conn:
        holder = await conn.scalar(
            text("SELECT lease_owner FROM messages WHERE id = :id"), {"id": poisoned}
        )
    assert holder == "thief"
