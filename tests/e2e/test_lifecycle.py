"""Retention and redaction through a real server with seconds-long limits (issue 15).

NOTIFIER_REDACT_AFTER=1s and NOTIFIER_RETENTION=3s: a canceled message (ended) loses
its body within about a second and a half and is gone within about three and a half,
while a pending one stays; GetMetrics over the hour says the same before and after. On
SQLite the body's bytes are then in neither the database file nor its WAL.
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

from notifier.config import Settings
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")
HOUR_MS = 3_600_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The usual test server's settings with seconds-long limits."""
    return settings.model_copy(update={"redact_after": "1s", "retention": "3s"})


async def _status(stub: Stub, mid: str) -> pb.GetDeliveryStatusResponse | None:
    try:
        return await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def _hour_metrics(stub: Stub, hour_ms: int) -> pb.GetMetricsResponse:
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromMilliseconds(hour_ms)
    end.FromMilliseconds(hour_ms + HOUR_MS)
    return await stub.GetMetrics(pb.GetMetricsRequest(start_time=start, end_time=end))


async def _send_and_cancel(stub: Stub, body: str) -> str:
    sent = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", body=body, tags=["lifecycle"])
    )
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=sent.message_id))
    return sent.message_id


async def test_redaction_then_retention(stub: Stub, database: TestDb) -> None:
    hour = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    ended = await _send_and_cancel(stub, "see you at 9")
    waiting = (
        await stub.SendMessage(
            pb.SendMessageRequest(to="+14155550101", body="later", send_at=_in_an_hour())
        )
    ).message_id
    before = await _hour_metrics(stub, hour)
    assert before.total == 2

    async def redacted() -> bool:
        reply = await _status(stub, ended)
        return reply is not None and reply.message.redacted

    await eventually(redacted, "the canceled message is redacted", within=10)
    reply = await _status(stub, ended)
    assert reply is not None
    # Metadata stays: status, history, tags.
    assert reply.message.status == pb.MESSAGE_STATUS_CANCELED
    assert list(reply.message.tags) == ["lifecycle"]
    assert [e.status for e in reply.history][-1] == pb.MESSAGE_STATUS_CANCELED
    body = await asyncio.to_thread(database.rows, "SELECT body FROM messages WHERE id = ?", ended)
    assert body == [(None,)]

    async def gone() -> bool:
        return await _status(stub, ended) is None

    await eventually(gone, "the canceled message is deleted", within=15)
    kept = await _status(stub, waiting)
    assert kept is not None
    assert not kept.message.redacted  # not ended: untouched
    for table in ("status_events", "message_tags", "idempotency_keys"):
        rows = await asyncio.to_thread(
            database.rows,
            f"SELECT count(*) FROM {table} WHERE message_id = ?",  # noqa: S608 - our tables
            ended,
        )
        assert rows == [(0,)], table
    assert await _hour_metrics(stub, hour) == before  # the rollups still count it


def _in_an_hour() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(time.time() * 1000) + HOUR_MS)
    return ts


@pytest.mark.backends("sqlite")
async def test_redacted_body_leaves_the_sqlite_files(stub: Stub, db_path: Path) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    ended = await _send_and_cancel(stub, secret)

    def in_files() -> list[str]:
        found = []
        for path in db_path.parent.glob(db_path.name + "*"):
            if secret.encode() in path.read_bytes():
                found.append(path.name)
        return found

    assert in_files()  # the test can see it while it is there

    async def redacted() -> bool:
        reply = await _status(stub, ended)
        return reply is None or reply.message.redacted

    await eventually(redacted, "the message is redacted", within=10)

    async def scrubbed() -> bool:
        return not await asyncio.to_thread(in_files)

    await eventually(scrubbed, f"{secret} leaves {db_path.name} and its WAL", within=5)
