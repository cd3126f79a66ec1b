"""The webhook sidecar stopped and restarted in the middle of 1,000 messages: the
callbacks Twilio posted meanwhile are lost for good (Twilio does not retry them), and
the reconciler still brings every message to its outcome. Both backends; slow."""

from __future__ import annotations

import asyncio

import pytest

from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.sidecar_engine import Running, engine_with_sidecar
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.backends("sqlite", "postgresql")]

TOTAL = 1_000
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


async def test_no_message_stays_waiting_after_a_sidecar_restart(
    database: TestDb, emulator: EmulatorServer
) -> None:
    async with engine_with_sidecar(
        database,
        emulator,
        NOTIFIER_RECONCILE_AFTER="2s",
        NOTIFIER_RECONCILE_GIVE_UP="1h",
        NOTIFIER_RECONCILE_RATE_PER_SECOND=100,
    ) as running:
        await _send(running, 0, 300)
        await _accepted(emulator, 300)
        await running.sidecar.stop()  # callbacks in flight and to come fail
        await _send(running, 300, 400)
        await _accepted(emulator, 700)
        await asyncio.sleep(0.5)  # their callbacks (20-60 ms after acceptance) are lost
        await running.restart_sidecar()
        await _send(running, 700, 300)
        await _accepted(emulator, TOTAL)
        lost = emulator.state.callback_failures
        assert lost >= 400 * 3  # every callback of the middle 400 at least

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
        assert metrics.reconciled >= 400
        assert metrics.unconfirmed == 0
        fetches = [len(emulator.state.fetches_of(m.sid)) for m in emulator.state.accepted]
        assert sum(1 for n in fetches if n) >= metrics.reconciled
        assert max(fetches) == 1  # one fetch per message: each found its outcome at once
