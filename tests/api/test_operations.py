"""ListMessages and CancelMessage through a real server (no dispatcher: messages stay put)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import timestamp_pb2

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import count_rows
from tests.support.rpc import field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub


async def _send(stub: Stub, to: str = "+14155550100", **kw: object) -> str:
    reply = await stub.SendMessage(pb.SendMessageRequest(to=to, body="hi", **kw))  # type: ignore[arg-type]
    return reply.message_id


async def test_list_pages_newest_first_with_filters(stub: Stub) -> None:
    ids = [await _send(stub, tags=["batch"] if i % 2 else []) for i in range(7)]
    other = await _send(stub, to="+447911123456")
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListMessages(pb.ListMessagesRequest(page_size=3, page_token=token))
        seen += [m.message_id for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seen == [other, *reversed(ids)]
    tagged = await stub.ListMessages(pb.ListMessagesRequest(filter=pb.MessageFilter(tag="batch")))
    assert [m.message_id for m in tagged.messages] == [ids[5], ids[3], ids[1]]
    assert all(list(m.tags) == ["batch"] for m in tagged.messages)
    by_to = await stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(to="whatsapp:+44 7911 123456"))
    )
    assert [m.message_id for m in by_to.messages] == [other]
    pending = await stub.ListMessages(
        pb.ListMessagesRequest(
            filter=pb.MessageFilter(statuses=[pb.MESSAGE_STATUS_FAILED]), page_size=500
        )
    )
    assert list(pending.messages) == []


async def test_list_time_range(stub: Stub) -> None:
    first = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="a"))
    cut = timestamp_pb2.Timestamp()
    cut.FromMilliseconds(first.created_at.ToMilliseconds() + 1)
    second = await _send(stub)
    later = await stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(created_after=cut))
    )
    assert [m.message_id for m in later.messages] == [second]


async def test_list_rejects_bad_paging(stub: Stub) -> None:
    await _send(stub)
    await _send(stub)
    page = await stub.ListMessages(pb.ListMessagesRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListMessages(
            pb.ListMessagesRequest(
                page_size=1,
                page_token=page.next_page_token,
                filter=pb.MessageFilter(tag="other"),
            )
        )
    assert "different filter" in field_violations(info.value)["page_token"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListMessages(pb.ListMessagesRequest(page_size=501, page_token="garbage!"))
    assert set(field_violations(info.value)) == {"page_size", "page_token"}


async def test_cancel_pending_then_cancel_again(stub: Stub) -> None:
    mid = await _send(stub)
    canceled = await stub.CancelMessage(pb.CancelMessageRequest(message_id=mid))
    assert canceled.message.status == pb.MESSAGE_STATUS_CANCELED
    again = await stub.CancelMessage(pb.CancelMessageRequest(message_id=mid))
    assert again.message.status == pb.MESSAGE_STATUS_CANCELED
    status = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
    assert [e.status for e in status.history] == [
        pb.MESSAGE_STATUS_PENDING,
        pb.MESSAGE_STATUS_CANCELED,
    ]
    assert status.message.timestamps.HasField("canceled")


async def test_cancel_errors(stub: Stub, db_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelMessage(pb.CancelMessageRequest(message_id="01J00000000000000000000000"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelMessage(pb.CancelMessageRequest(message_id="nope"))
    assert "message_id" in field_violations(info.value)
    assert count_rows(db_path, "status_events") == 0


async def test_retry_requires_ids_or_filter(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RetryMessages(pb.RetryMessagesRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mid = await _send(stub)
    reply = await stub.RetryMessages(pb.RetryMessagesRequest(message_ids=[mid]))
    assert list(reply.message_ids) == []
    assert reply.skipped[0].reason == "status PENDING is not retryable"
