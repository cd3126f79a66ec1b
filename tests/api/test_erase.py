"""EraseRecipient through a real server, on both backends (issue 15).

Inbound messages and recipient states are written straight into the database
(tests/support/inbound.py, standing in for the webhook sidecar); everything else goes
through the gRPC API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import timestamp_pb2

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.inbound import heard_from
from tests.support.rpc import field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")
ERASED = "+14155550100"
OTHER = "+14155550101"


async def _send(stub: Stub, to: str, body: str = "hi", later: bool = False) -> str:
    send_at = None
    if later:
        send_at = timestamp_pb2.Timestamp()
        send_at.FromMilliseconds(int(time.time() * 1000) + 3_600_000)
    reply = await stub.SendMessage(
        pb.SendMessageRequest(to=to, body=body, send_at=send_at, tags=["erase"])
    )
    return reply.message_id


async def _exists(stub: Stub, mid: str) -> bool:
    try:
        await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True


async def _erase(stub: Stub, to: str = ERASED) -> pb.EraseRecipientResponse:
    return await stub.EraseRecipient(pb.EraseRecipientRequest(to=to))


def _this_hour() -> pb.GetMetricsRequest:
    """The current whole hour: a window GetMetrics reads from its rollups alone."""
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    hour = int(time.time() * 1000) // 3_600_000 * 3_600_000
    start.FromMilliseconds(hour)
    end.FromMilliseconds(hour + 3_600_000)
    return pb.GetMetricsRequest(start_time=start, end_time=end, tag="erase")


async def test_erase_everything_about_a_number(stub: Stub, database: TestDb) -> None:
    window = _this_hour()
    mine = [await _send(stub, ERASED), await _send(stub, "whatsapp:" + ERASED, later=True)]
    theirs = await _send(stub, OTHER)
    await heard_from(database, ERASED)
    await heard_from(database, OTHER)
    before = await stub.GetMetrics(window)

    erased = await _erase(stub)
    assert erased == pb.EraseRecipientResponse(
        messages=2,
        status_events=2,  # each one's "pending"/"scheduled" event
        attempts=0,
        inbound_messages=1,
        recipient_states=1,
        canceled=2,  # both were still waiting: canceled first
    )
    assert [await _exists(stub, mid) for mid in mine] == [False, False]
    assert await _exists(stub, theirs)
    for table, column in (("inbound_messages", "from_addr"), ("recipients", "address")):
        left = await asyncio.to_thread(
            database.rows,
            f"SELECT {column} FROM {table}",  # noqa: S608 - our own names
        )
        assert left == [(OTHER,)], table
    # Counted still over whole hours (the rollups), now as canceled: metrics hold no
    # personal data.
    after = await stub.GetMetrics(window)
    assert after.total == before.total == 3
    assert {s.status: s.count for s in after.by_status} == {
        pb.MESSAGE_STATUS_PENDING: 1,
        pb.MESSAGE_STATUS_CANCELED: 2,
    }
    # Idempotent: nothing more to erase.
    assert await _erase(stub) == pb.EraseRecipientResponse()


async def test_refused_while_a_send_is_in_flight(stub: Stub, database: TestDb) -> None:
    mid = await _send(stub, ERASED)
    leased = int(time.time() * 1000) + 60_000  # a dispatcher holds it: sending now
    await asyncio.to_thread(
        database.execute, "UPDATE messages SET lease_expires_at = ? WHERE id = ?", leased, mid
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _erase(stub)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in flight" in (info.value.details() or "")
    assert await _exists(stub, mid)  # nothing erased
    await asyncio.to_thread(
        database.execute, "UPDATE messages SET lease_expires_at = NULL WHERE id = ?", mid
    )
    assert (await _erase(stub)).messages == 1


async def test_bad_number_names_the_field(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _erase(stub, "555-0100")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {"to"}


@pytest.mark.backends("sqlite")
async def test_erased_body_leaves_the_sqlite_files(stub: Stub, db_path: Path) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    await _send(stub, ERASED, body=secret)

    def in_files() -> list[str]:
        return [
            p.name
            for p in db_path.parent.glob(db_path.name + "*")
            if secret.encode() in p.read_bytes()
        ]

    assert in_files()  # the test can see it while it is there
    assert (await _erase(stub)).messages == 1
    assert await asyncio.to_thread(in_files) == []
