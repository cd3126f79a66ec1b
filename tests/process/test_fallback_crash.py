"""kill -9 between a WhatsApp failure and its SMS fallback: the SMS is still sent, once.

The failure (learned by the reconciler's fetch, the callbacks being lost) and the SMS
row are one transaction; the SMS's send hangs at Twilio when the process is killed, so
the SMS has not reached Twilio yet. The next process sends it, and nothing sends a
second one."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import TestDb
from tests.support.process import sending_env, start_server

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TO = "+14155550181"


def _rows(db: TestDb) -> list[tuple[object, ...]]:
    return db.rows("SELECT channel, status, fallback_of FROM messages ORDER BY id")


async def _until(db: TestDb, done: object, what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not done(await asyncio.to_thread(_rows, db)):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}; rows {_rows(db)}"
        await asyncio.sleep(0.05)


async def test_sigkill_after_the_failure_still_sends_exactly_one_sms(database: TestDb) -> None:
    db = database
    faults = Faults(whatsapp_outcomes={TO: 63024}, to_drop_callbacks=[TO])
    async with EmulatorServer(faults=faults) as emu:
        env = sending_env(
            db,
            emu,
            NOTIFIER_RECONCILE_AFTER="1s",
            NOTIFIER_LEASE_SECONDS="2",
            NOTIFIER_TWILIO_TIMEOUT_SECONDS="1",
            NOTIFIER_AMBIGUOUS_POLICY="retry",
        )
        first = await asyncio.to_thread(start_server, env, "grpc")
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = notifier_pb2_grpc.NotifierStub(channel)
            request = pb.SendMessageRequest(
                to=TO, body="hi", fallback=pb.Fallback(sms=True, sms_body="by sms")
            )
            original = (await stub.SendMessage(request)).message_id
        deadline = time.monotonic() + 30
        while not emu.state.accepted_to(TO):
            assert time.monotonic() < deadline, "WhatsApp send never reached Twilio"
            await asyncio.sleep(0.02)
        emu.faults = Faults(hang_fraction=1.0)  # from now on Twilio takes no create request

        def failed_with_sms(rows: list[tuple[object, ...]]) -> bool:
            return ("whatsapp", "failed", None) in rows and any(r[2] == original for r in rows)

        await _until(db, failed_with_sms, "the failure and its SMS stored")
        first.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait, 10)
        assert [m.is_whatsapp for m in emu.state.accepted_to(TO)] == [True]  # no SMS yet

        emu.faults = Faults()
        second = await asyncio.to_thread(start_server, env, "grpc")
        try:

            def sms_sent(rows: list[tuple[object, ...]]) -> bool:
                return any(r[0] == "sms" and r[1] != "pending" for r in rows)

            await _until(db, sms_sent, "the SMS sent after the restart")
            await asyncio.sleep(2.5)  # past another lease: nothing sends it again
        finally:
            assert await asyncio.to_thread(second.stop) == 0
    sms = [m for m in emu.state.accepted_to(TO) if not m.is_whatsapp]
    assert [m.body for m in sms] == ["by sms"]
    assert [r[0] for r in _rows(db)] == ["whatsapp", "sms"]
