"""Messages whose status callbacks never come end in their real state: the reconciler
fetches them from Twilio (the emulator, over HTTP) and applies what it says through the
callbacks' own rule; on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import pytest

from notifier.dispatch.reconciler import Reconciler
from notifier.emulator.app import Credentials
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import start_engine
from tests.support.sidecar_engine import Running, engine_with_sidecar
from tests.support.waiting import eventually

pytestmark = pytest.mark.backends("sqlite", "postgresql")

SILENT_READ = ("+14155550161", "+14155550162")
SILENT_FAILED = "+14155550163"
SILENT_UNDELIVERED = "+14155550164"
SILENT_SMS = "+14155550165"
HEARD = "+14155550166"


def _sid_of(emulator: EmulatorServer, to: str) -> str:
    (message,) = emulator.state.accepted_to(to)
    return message.sid


def _fetched(running: Running, result: str) -> float:
    reconciler = running.server.reconciler
    assert isinstance(reconciler, Reconciler)
    value = reconciler.metrics.registry.get_sample_value(
        "notifier_reconcile_fetches_total", {"result": result}
    )
    return value or 0.0


def _ms(moment: datetime | None) -> int:
    assert moment is not None
    return int(moment.replace(microsecond=0).timestamp() * 1000)


async def _metrics(running: Running, tag: str) -> pb.GetMetricsResponse:
    return await running.engine.stub.GetMetrics(pb.GetMetricsRequest(tag=tag))


async def test_lost_callbacks_end_as_twilio_says_with_one_fetch_each(
    database: TestDb, emulator: EmulatorServer
) -> None:
    silent = [*SILENT_READ, SILENT_FAILED, SILENT_UNDELIVERED, SILENT_SMS]
    emulator.faults = Faults(
        to_drop_callbacks=silent,
        to_outcomes={SILENT_FAILED: ("failed", 63016), SILENT_UNDELIVERED: ("undelivered", 30003)},
    )
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="1s", NOTIFIER_RECONCILE_GIVE_UP="1h"
    ) as running:
        eng = running.engine
        expected = {}
        for to in (*SILENT_READ, HEARD):
            expected[await eng.send(to=to, tags=["lost"])] = pb.MESSAGE_STATUS_READ
        expected[await eng.send(to=SILENT_FAILED, tags=["lost"])] = pb.MESSAGE_STATUS_FAILED
        undelivered = await eng.send(to=SILENT_UNDELIVERED, tags=["lost"])
        expected[undelivered] = pb.MESSAGE_STATUS_UNDELIVERED
        sms = await eng.send(to=SILENT_SMS, channel=pb.CHANNEL_SMS, tags=["lost"])
        expected[sms] = pb.MESSAGE_STATUS_DELIVERED
        for mid, status in expected.items():
            await eng.until_status(mid, status)
        # Past the time a second fetch would be due (3 intervals after the last news):
        # a message in its final state is never fetched again.
        await asyncio.sleep(3.5)
        for to in silent:
            assert len(emulator.state.fetches_of(_sid_of(emulator, to))) == 1, to
        assert emulator.state.fetches_of(_sid_of(emulator, HEARD)) == []  # its callbacks came
        assert not any(
            c.ok
            for to in silent
            for c in emulator.state.callbacks_for(_sid_of(emulator, to), sent_only=False)
        )

        got = await eng.status(undelivered)
        assert (got.message.error_code, got.message.error_message) == (
            30003,
            "Unreachable destination handset",
        )
        twilio = emulator.state.message(_sid_of(emulator, SILENT_UNDELIVERED))
        assert twilio is not None
        # The sent time is Twilio's date_sent, as the lost "sent" callback would have said.
        assert got.message.timestamps.sent.ToMilliseconds() == _ms(twilio.date_sent)
        assert [e.source for e in got.history][-2:] == ["reconcile", "reconcile"]
        read = await eng.status(next(iter(expected)))
        assert {e.status for e in read.history if e.source == "reconcile"} == {
            pb.MESSAGE_STATUS_SENT,
            pb.MESSAGE_STATUS_READ,
        }
        metrics = await _metrics(running, "lost")
        assert (metrics.reconciled, metrics.unconfirmed) == (5, 0)
        assert _fetched(running, "updated") == 5


async def test_a_message_never_final_is_unconfirmed_never_delivered_or_failed(
    database: TestDb, emulator: EmulatorServer
) -> None:
    # Twilio sends it but never learns more: it stays "sent" there.
    emulator.faults = Faults(
        to_drop_callbacks=[HEARD], delivered_after_seconds=3600, read_after_seconds=3600
    )
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="1s", NOTIFIER_RECONCILE_GIVE_UP="5s"
    ) as running:
        eng = running.engine
        mid = await eng.send(to=HEARD, tags=["limbo"])
        await eng.until_status(mid, pb.MESSAGE_STATUS_SENT)

        async def unconfirmed() -> bool:
            return (await _metrics(running, "limbo")).unconfirmed == 1

        await eventually(unconfirmed, "the message counted as unconfirmed", within=20)
        metrics = await _metrics(running, "limbo")
        assert [(c.status, c.count) for c in metrics.by_status] == [(pb.MESSAGE_STATUS_SENT, 1)]
        assert (metrics.delivery_rate, metrics.failure_rate) == (0.0, 0.0)
        assert (await eng.status(mid)).message.status == pb.MESSAGE_STATUS_SENT
        # The fetch that found it sent is news; then fetches 1 and 3 intervals after that
        # news, then none (the next would be 12 intervals later, past the give-up).
        fetches = emulator.state.fetches_of(_sid_of(emulator, HEARD))
        assert len(fetches) == 3
        assert fetches[1] - fetches[0] >= 0.9
        assert fetches[2] - fetches[0] >= 2.9  # backed off: 3 intervals, not 2
        await asyncio.sleep(1.5)
        assert len(emulator.state.fetches_of(_sid_of(emulator, HEARD))) == 3


async def test_a_message_deleted_at_twilio_is_recorded_and_not_fetched_again(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(to_drop_callbacks=[HEARD])
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="0.5s", NOTIFIER_RECONCILE_GIVE_UP="1h"
    ) as running:
        mid = await running.engine.send(to=HEARD, tags=["gone"])
        await running.engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
        sid = _sid_of(emulator, HEARD)
        await emulator.reset()  # Twilio forgets it (deleted there): fetches answer 404

        async def fetched() -> bool:
            return _fetched(running, "not_found") == 1

        await eventually(fetched, "a fetch answered 404")
        await asyncio.sleep(2.0)  # 4 intervals: a retried fetch would have come
        assert len(emulator.state.fetches_of(sid)) == 1
        assert (await running.engine.status(mid)).message.status == pb.MESSAGE_STATUS_QUEUED
        assert (await _metrics(running, "gone")).unconfirmed == 1


async def test_rate_limited_fetches_back_off_then_succeed(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(to_drop_callbacks=[HEARD], fetch_error=20429)
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="0.5s", NOTIFIER_RECONCILE_GIVE_UP="1h"
    ) as running:
        mid = await running.engine.send(to=HEARD)
        await running.engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
        sid = _sid_of(emulator, HEARD)

        async def twice() -> bool:
            return len(emulator.state.fetches_of(sid)) >= 2

        await eventually(twice, "two fetches")
        emulator.faults = Faults(to_drop_callbacks=[HEARD])  # Twilio answers again
        second = emulator.state.fetches_of(sid)[1]
        accepted = emulator.state.message(sid)
        assert accepted is not None
        # The last news (QUEUED) came after Twilio took it; the second fetch is due 3
        # intervals after that news, not at the next poll.
        assert second - accepted.monotonic >= 1.5
        await running.engine.until_status(mid, pb.MESSAGE_STATUS_READ, within=20)
        assert _fetched(running, "rate_limited") == 2
        assert _fetched(running, "updated") == 1


async def test_refused_credentials_stop_the_reconciler_with_an_error(
    database: TestDb, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.faults = Faults(to_drop_callbacks=[*SILENT_READ])
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="0.5s", NOTIFIER_RECONCILE_GIVE_UP="1h"
    ) as running:
        ids = [await running.engine.send(to=to) for to in SILENT_READ]
        for mid in ids:
            await running.engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
        # The account's token changes at Twilio: our requests are refused with 401.
        emulator.emulator.credentials = Credentials(emulator.account_sid, "rotated" * 4)
        with caplog.at_level(logging.ERROR, logger="notifier.dispatch.reconciler"):

            async def refused() -> bool:
                return _fetched(running, "unauthorized") >= 1

            await eventually(refused, "a fetch refused with 401")
            await asyncio.sleep(1.5)  # later rounds would fetch again
        assert emulator.state.fetch_count == _fetched(running, "unauthorized")
        assert _fetched(running, "unauthorized") <= 2  # the two in flight at most, then none
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "reconciliation stopped" in errors[0].getMessage()
        for mid in ids:
            assert (await running.engine.status(mid)).message.status == pb.MESSAGE_STATUS_QUEUED


@pytest.mark.backends("postgresql")
async def test_two_replicas_fetch_each_lost_message_once(
    database: TestDb, emulator: EmulatorServer
) -> None:
    """Both replicas run a reconciler; the advisory lock gives each round to one."""
    emulator.faults = Faults(to_drop_callbacks=[*SILENT_READ])
    env = {"NOTIFIER_RECONCILE_AFTER": "0.5s", "NOTIFIER_RECONCILE_GIVE_UP": "1h"}
    async with engine_with_sidecar(database, emulator, **env) as first:
        other, channel = await start_engine(first.settings)
        try:
            assert other.reconciler is not None
            ids = [await first.engine.send(to=to) for to in SILENT_READ]
            for mid in ids:
                await first.engine.until_status(mid, pb.MESSAGE_STATUS_READ)
            await asyncio.sleep(2.0)  # 4 intervals: time for a second fetch to show up
            for to in SILENT_READ:
                assert len(emulator.state.fetches_of(_sid_of(emulator, to))) == 1
            both = [first.server.reconciler, other.reconciler]
            updated = [
                r.metrics.registry.get_sample_value(
                    "notifier_reconcile_fetches_total", {"result": "updated"}
                )
                for r in both
                if r is not None
            ]
            assert sum(v or 0 for v in updated) == len(SILENT_READ)
        finally:
            await channel.close()
            await other.stop(grace=1)


def _busiest_second(times: list[float]) -> int:
    """The most requests in any window of one second, less the arrival jitter that a
    loaded machine adds between a grant and its arrival (as in test_senders)."""
    span = 0.95
    return max((sum(1 for t in times if start <= t < start + span) for start in times), default=0)


async def test_fetches_have_their_own_budget_and_never_take_sending_slots(
    database: TestDb, emulator: EmulatorServer
) -> None:
    """Sends and fetches at 5/s each, running at the same time: each keeps its own
    limit, and together they go faster than either allows, so no fetch took a send's
    slot (one shared budget would cap both together at 5 in any second)."""
    silent = [f"+1415555{i:04d}" for i in range(300, 330)]
    emulator.faults = Faults(to_drop_callbacks=silent)
    env = {
        "NOTIFIER_RATE_LIMIT_PER_SECOND": "5",
        "NOTIFIER_RECONCILE_RATE_PER_SECOND": "5",
        "NOTIFIER_RECONCILE_AFTER": "1s",
        "NOTIFIER_RECONCILE_GIVE_UP": "1h",
    }
    async with engine_with_sidecar(database, emulator, **env) as running:
        ids = [await running.engine.send(to=to, tags=["budgets"]) for to in silent]
        for mid in ids:
            await running.engine.until_status(mid, pb.MESSAGE_STATUS_READ, within=60)
    sends = sorted(r.monotonic for r in emulator.state.requests)
    fetches = sorted(f.monotonic for f in emulator.state.fetches)
    assert len(sends) == len(silent)  # each sent once: fetching never resends
    assert _busiest_second(sends) <= 5
    assert _busiest_second(fetches) <= 5
    # Fetches ran while sends were still going out, and added to them.
    assert fetches[0] < sends[-1]
    assert _busiest_second(sorted(sends + fetches)) > 5
