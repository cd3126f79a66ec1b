"""Retention and redaction through a real server with seconds-long limits (issue 15).

NOTIFIER_REDACT_AFTER=1s and NOTIFIER_RETENTION=3s: a canceled message (ended) loses
its body within about a second and a half and is gone within about three and a half,
while a pending one stays; GetMetrics over the hour says the same before and after. On
SQLite the body's bytes are then in neither the database file nor its WAL. Through the
dispatcher and the emulator (retention 5s): messages Twilio refused lose their template
variables and media URLs too, then go with their attempts, and an inbound message goes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from notifier.config import Settings
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine
from tests.support.inbound import heard_from
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")
HOUR_MS = 3_600_000
REFUSED = "+14155550199"  # Twilio (the emulator) refuses it: FAILED after one attempt


@pytest.fixture
def engine_env() -> dict[str, Any]:
    """The engine's limits: retention long enough to look at the redacted rows first."""
    return {"NOTIFIER_REDACT_AFTER": "1s", "NOTIFIER_RETENTION": "5s"}


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


async def test_sent_messages_lose_variables_and_media_then_go_with_their_attempts(
    engine: Engine, emulator: EmulatorServer, database: TestDb
) -> None:
    emulator.faults = Faults(to_errors={REFUSED: 21211})
    ids = [
        await engine.send(
            to=REFUSED, body=None, content_sid="HX" + "ab" * 16, variables={"1": "Ana"}
        ),
        await engine.send(to=REFUSED, body="receipt", media_urls=["https://example.com/r.pdf"]),
    ]
    for mid in ids:
        failed = await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED)
        assert len(failed.attempts) == 1
    await heard_from(database, REFUSED, state=False)
    content = "SELECT body, variables, media_urls FROM messages WHERE id = ?"
    (template,), (media,) = [await asyncio.to_thread(database.rows, content, mid) for mid in ids]
    # The test can see the content while it is there: variables, then body and media URL.
    assert template[1] is not None
    assert None not in media[0::2]

    async def redacted() -> bool:
        replies = [await _status(engine.stub, mid) for mid in ids]
        assert all(r is not None for r in replies), "deleted before it was seen redacted"
        return all(r is not None and r.message.redacted for r in replies)

    await eventually(redacted, "both failed messages are redacted", within=10)
    for mid in ids:
        rows = await asyncio.to_thread(database.rows, content, mid)
        assert rows == [(None, None, None)]
        reply = await _status(engine.stub, mid)
        assert reply is not None
        assert reply.message.error_code == 21211  # the metadata stays

    async def gone() -> bool:
        inbound = await asyncio.to_thread(database.count, "inbound_messages")
        return inbound == 0 and all([await _status(engine.stub, mid) is None for mid in ids])

    await eventually(gone, "both failed messages and the inbound one are deleted", within=15)
    for mid in ids:
        attempts = "SELECT count(*) FROM delivery_attempts WHERE message_id = ?"
        assert await asyncio.to_thread(database.rows, attempts, mid) == [(0,)]
