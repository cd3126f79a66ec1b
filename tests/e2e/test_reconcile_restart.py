"""The webhook sidecar stopped and restarted in the middle of 1,000 messages: the
callbacks Twilio posted meanwhile are lost for good (Twilio does not retry them), and
the reconciler still brings every message to its outcome, fetching each once, about one
reconcile interval after its last news. Both backends; slow.

Each message's history shows how long it went without news: from its last news (the
dispatcher's QUEUED, or a callback) to the event that gave its outcome."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest

from notifier.dispatch.reconciler import ReconcileConfig
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.sidecar_engine import Running, engine_with_sidecar
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.backends("sqlite", "postgresql")]

TOTAL = 1_000
LOST = 200  # sent while the sidecar is down: every callback of theirs is lost
AFTER_S = 5.0  # NOTIFIER_RECONCILE_AFTER
RATE = 100  # the fetches' budget (at most 100/s)
FETCHES = "notifier_reconcile_fetches_total"
WAITING = [
    pb.MESSAGE_STATUS_QUEUED,
    pb.MESSAGE_STATUS_ACCEPTED,
    pb.MESSAGE_STATUS_SENDING,
    pb.MESSAGE_STATUS_SENT,
]


async def _send(running: Running, first: int, count: int) -> None:
    stub = running.engine.stub
    for start in range(first, first + count, 50):
        await asyncio.gather(
            *(
                stub.SendMessage(
                    pb.SendMessageRequest(
                        to=f"+1415555{i:04d}", body=f"restart {i}", tags=["restart"]
                    )
                )
                for i in range(start, min(start + 50, first + count))
            )
        )


async def _accepted(emulator: EmulatorServer, count: int) -> None:
    async def enough() -> bool:
        return len(emulator.state.accepted) >= count

    await eventually(enough, f"{count} messages at Twilio", within=60)


def _backed_off(running: Running) -> float:
    """Fetches the reconciler counted as backing off (in its /metrics counters)."""
    reconciler = running.server.reconciler
    assert reconciler is not None
    results = ("rate_limited", "twilio_error", "no_answer")
    return sum(
        reconciler.metrics.registry.get_sample_value(FETCHES, {"result": r}) or 0.0 for r in results
    )


@dataclass(frozen=True)
class Story:
    """What a message's history says about its news (times in ms, Notifier's clock)."""

    sid: str
    outcome_source: str  # who first gave its outcome: "callback" or "reconcile"
    silent_ms: int  # from its last news to its outcome
    callbacks_ms: list[int]  # when each of its callbacks was written
    reconciled: bool  # a fetch moved it (GetMetrics counts it as reconciled)


async def _stories(running: Running) -> dict[str, Story]:
    """Every message's history, read over gRPC, by its Twilio SID."""
    stub, token, found = running.engine.stub, "", {}
    while True:
        page = await stub.ListMessages(
            pb.ListMessagesRequest(
                filter=pb.MessageFilter(tag="restart"), page_size=200, page_token=token
            )
        )
        for message in page.messages:
            status = await stub.GetDeliveryStatus(
                pb.GetDeliveryStatusRequest(message_id=message.message_id)
            )
            found[message.twilio_sid] = _story(message.twilio_sid, list(status.history))
        token = page.next_page_token
        if not token:
            return found


def _story(sid: str, history: list[pb.StatusEvent]) -> Story:
    outcomes = (pb.MESSAGE_STATUS_DELIVERED, pb.MESSAGE_STATUS_READ)
    outcome = next(e for e in history if e.applied and e.status in outcomes)
    at = outcome.occurred_at.ToMilliseconds()
    # A fetch's "sent" carries Twilio's date_sent, not when the news came: not news here.
    news = [
        e.occurred_at.ToMilliseconds()
        for e in history
        if e.source != "reconcile" and e.occurred_at.ToMilliseconds() <= at
    ]
    return Story(
        sid,
        outcome.source,
        at - max(news),
        [e.occurred_at.ToMilliseconds() for e in history if e.source == "callback"],
        any(e.source == "reconcile" and e.applied for e in history),
    )


async def test_no_message_stays_waiting_after_a_sidecar_restart(
    database: TestDb, emulator: EmulatorServer
) -> None:
    async with engine_with_sidecar(
        database,
        emulator,
        NOTIFIER_RECONCILE_AFTER=f"{AFTER_S}s",
        NOTIFIER_RECONCILE_GIVE_UP="1h",
        NOTIFIER_RECONCILE_RATE_PER_SECOND=RATE,
    ) as running:
        await _send(running, 0, 300)
        await _accepted(emulator, 300)
        await running.sidecar.stop()  # callbacks in flight and to come fail
        await _send(running, 300, LOST)
        await _accepted(emulator, 300 + LOST)
        await asyncio.sleep(0.5)  # their callbacks (20-60 ms after acceptance) are lost
        await running.restart_sidecar()
        await _send(running, 300 + LOST, TOTAL - 300 - LOST)
        await _accepted(emulator, TOTAL)
        lost = emulator.state.callback_failures
        assert lost >= LOST * 3  # every callback of the middle ones at least

        async def none_waiting() -> bool:
            page = await running.engine.stub.ListMessages(
                pb.ListMessagesRequest(
                    filter=pb.MessageFilter(statuses=WAITING, tag="restart"), page_size=1
                )
            )
            return not page.messages

        await eventually(none_waiting, "no message QUEUED or SENT", within=60)
        metrics = await running.engine.stub.GetMetrics(pb.GetMetricsRequest(tag="restart"))
        outcomes = {c.status: c.count for c in metrics.by_status}
        assert set(outcomes) <= {pb.MESSAGE_STATUS_DELIVERED, pb.MESSAGE_STATUS_READ}
        assert sum(outcomes.values()) == TOTAL
        assert metrics.reconciled >= LOST
        assert metrics.unconfirmed == 0

        stories = await _stories(running)
        assert len(stories) == TOTAL
        assert sum(1 for m in stories.values() if m.reconciled) == metrics.reconciled
        after_ms = int(AFTER_S * 1000)
        fetches = {f.sid: f for f in emulator.state.fetches}  # each SID's last fetch
        # One fetch per message per interval; a message is fetched again only when its
        # fetch backed off (under load, Twilio's answer can outlast the client's
        # timeout), and then at its next time, intervals later.
        for sid in fetches:
            times = emulator.state.fetches_of(sid)
            assert all(b - a >= AFTER_S for a, b in itertools.pairwise(times)), sid
        repeated = emulator.state.fetch_count - len(fetches)
        assert repeated == _backed_off(running)
        for sid, fetch in fetches.items():
            story = stories[sid]
            fetched_ms = int(fetch.received_at.timestamp() * 1000)
            # A fetch comes after an interval without news. A callback written less
            # than an interval before it (or after it) came late: it was under way
            # (queued for the writer) while the fetch was chosen; the fetch then
            # repeats what it says, or adds what it lacked.
            raced = any(t > fetched_ms - after_ms for t in story.callbacks_ms)
            assert story.reconciled or raced, story
            assert story.silent_ms >= after_ms or raced, story
        # None left waiting while the reconciler idled: each waited one interval, then
        # at most a poll and the time the reconciler spent fetching (the machine's pace).
        got = sorted(f.monotonic for f in fetches.values())
        busy_ms = (got[-1] - got[0]) * 1000
        poll_ms = ReconcileConfig(AFTER_S, 3600).poll_seconds * 1000
        longest = max(m.silent_ms for m in stories.values())
        assert longest <= after_ms + poll_ms + busy_ms, f"{longest} ms without news"
