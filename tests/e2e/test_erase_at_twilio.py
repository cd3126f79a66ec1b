"""EraseRecipient with at_twilio against the emulator over real HTTP (issue 15): a message
Twilio has finished with is deleted there (DELETE .../Messages/{Sid}.json), one still
in flight there has its body blanked (POST Body="") instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine
from tests.support.sidecar_engine import engine_with_sidecar
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")
ERASED = "+14155550123"


async def test_erase_at_twilio(engine: Engine, emulator: EmulatorServer) -> None:
    done = await engine.send(to=ERASED, body="finished")
    done_sid = (await engine.until_status(done, pb.MESSAGE_STATUS_QUEUED)).message.twilio_sid

    async def finished_at_twilio() -> bool:
        message = emulator.state.message(done_sid)
        return message is not None and message.status in ("delivered", "read")

    await eventually(finished_at_twilio, "Twilio (the emulator) finishes the first message")
    # The next one stays queued at Twilio.
    emulator.faults = Faults(
        sent_after_seconds=600, delivered_after_seconds=600, read_after_seconds=600
    )
    busy = await engine.send(to=ERASED, body="still going")
    busy_sid = (await engine.until_status(busy, pb.MESSAGE_STATUS_QUEUED)).message.twilio_sid
    assert emulator.state.message(busy_sid) is not None

    reply = await engine.stub.EraseRecipient(pb.EraseRecipientRequest(to=ERASED, at_twilio=True))
    assert (reply.messages, reply.twilio_deleted, reply.twilio_redacted) == (2, 1, 1)
    assert emulator.state.message(done_sid) is None  # deleted at Twilio
    redacted = emulator.state.message(busy_sid)
    assert redacted is not None
    assert redacted.body == ""  # in flight: body blanked
    again = await engine.stub.EraseRecipient(pb.EraseRecipientRequest(to=ERASED, at_twilio=True))
    assert again == pb.EraseRecipientResponse()  # idempotent


async def test_at_twilio_without_twilio_is_refused(stub: Stub) -> None:
    """The plain test server has no Twilio account: at_twilio is refused, not ignored."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EraseRecipient(pb.EraseRecipientRequest(to=ERASED, at_twilio=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_refused_while_a_send_to_the_number_is_on_its_way_to_twilio(
    database: TestDb, emulator: EmulatorServer
) -> None:
    """A real send in flight (the emulator answers 3 s after the request arrives):
    EraseRecipient is refused with FAILED_PRECONDITION and erases nothing; once
    Twilio's answer is recorded, the same call erases the message."""
    emulator.faults = Faults(latency_seconds=3)
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_TWILIO_TIMEOUT_SECONDS=10
    ) as running:
        eng = running.engine
        mid = await eng.send(to=ERASED, body="on its way")

        async def arrived() -> bool:
            return bool(emulator.state.requests)

        await eventually(arrived, "the send reaches Twilio (the emulator)")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await eng.stub.EraseRecipient(pb.EraseRecipientRequest(to=ERASED))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await eng.status(mid)).message.message_id == mid  # nothing erased
        await eng.until(mid, lambda s: s.message.twilio_sid != "", within=30)
        reply = await eng.stub.EraseRecipient(pb.EraseRecipientRequest(to=ERASED))
        assert reply.messages == 1
