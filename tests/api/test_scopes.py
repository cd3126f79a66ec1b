"""Least privilege through a real server (issue 16): each scope against each RPC, every
caller seeing only its own messages, operator actions naming their token in the history,
and sender profiles chosen, filtered and restricted per token."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from notifier.api.auth import token_digest
from notifier.cli import _security
from notifier.server import NotifierServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.auth import bearer, serve, server_settings
from tests.support.databases import count_rows
from tests.support.watching import read_changes, watching

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

TOKENS = {
    "sender": "send",
    "reader": "read",
    "manager": "manage",
    "root": "admin",
    "a": "send+read+manage",
    "b": "send+read+manage",
}
BRAND_ONLY = "brandonly"
UNKNOWN_ID = "01JD0000000000000000000000"
ADMINS = "+14155550101,+14155550102"


def _token(name: str) -> str:
    return f"secret-token-of-{name}"


def _entries() -> str:
    entries = [f"{n}:{s}:{token_digest(_token(n))}" for n, s in TOKENS.items()]
    entries.append(f"{BRAND_ONLY}:send+read:{token_digest(_token(BRAND_ONLY))}:brand")
    return ",".join(entries)


def _settings(db_path: Path) -> Any:
    return server_settings(
        db_path,
        NOTIFIER_API_TOKENS=_entries(),
        NOTIFIER_SENDERS=json.dumps({"brand": {"whatsapp_from": "whatsapp:+14155550111"}}),
        ADMIN_WHATSAPP_NUMBERS=ADMINS,
    )


@pytest.fixture
async def scoped(db_path: Path) -> AsyncIterator[NotifierServer]:
    server = await serve(_settings(db_path))
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def stub(scoped: NotifierServer) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scoped.port}") as channel:
        yield notifier_pb2_grpc.NotifierStub(channel)


def _as(name: str) -> tuple[tuple[str, str]]:
    return bearer(_token(name))


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo detail")


def _violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


async def _bulk(stub: Stub, md: Any) -> None:
    request = pb.SendBulkRequest(
        defaults=pb.BulkContent(body="bulk"), items=[pb.BulkItem(to="+14155550103")]
    )
    # Written on the call rather than from an iterator: a refused stream ends before the
    # request goes out, and the write then raises the call's own status.
    call = stub.SendBulk(metadata=md)
    await call.write(request)
    await call.done_writing()
    async for _ in call:
        pass


async def _watch(stub: Stub, md: Any) -> None:
    call = stub.WatchDeliveryStatus(
        pb.WatchDeliveryStatusRequest(tag="t"), metadata=md, timeout=0.3
    )
    async for _ in call:
        pass


CALLS: dict[str, Callable[[Stub, Any], Awaitable[Any]]] = {
    "SendMessage": lambda s, md: s.SendMessage(
        pb.SendMessageRequest(to="+14155550100", body="hi"), metadata=md
    ),
    "SendBulk": _bulk,
    "NotifyOrder": lambda s, md: s.NotifyOrder(
        pb.NotifyOrderRequest(
            order_id="A-1",
            customer_name="Ana",
            customer_email="ana@example.com",
            items=[pb.OrderItem(title="Mug", quantity=1, unit_price="2.00")],
            total="2.00",
            currency="USD",
        ),
        metadata=md,
    ),
    "NotifyAdmins": lambda s, md: s.NotifyAdmins(
        pb.NotifyAdminsRequest(custom=pb.CustomNotification(title="t", body="b")), metadata=md
    ),
    "GetDeliveryStatus": lambda s, md: s.GetDeliveryStatus(
        pb.GetDeliveryStatusRequest(message_id=UNKNOWN_ID), metadata=md
    ),
    "ListMessages": lambda s, md: s.ListMessages(pb.ListMessagesRequest(), metadata=md),
    "GetMetrics": lambda s, md: s.GetMetrics(pb.GetMetricsRequest(), metadata=md),
    "WatchDeliveryStatus": _watch,
    "CancelMessage": lambda s, md: s.CancelMessage(
        pb.CancelMessageRequest(message_id=UNKNOWN_ID), metadata=md
    ),
    "RetryMessages": lambda s, md: s.RetryMessages(
        pb.RetryMessagesRequest(message_ids=[UNKNOWN_ID]), metadata=md
    ),
    "EraseRecipient": lambda s, md: s.EraseRecipient(
        pb.EraseRecipientRequest(to="+14155550199"), metadata=md
    ),
}
NEEDS = {
    "SendMessage": "send",
    "SendBulk": "send",
    "NotifyOrder": "send",
    "NotifyAdmins": "send",
    "GetDeliveryStatus": "read",
    "ListMessages": "read",
    "GetMetrics": "read",
    "WatchDeliveryStatus": "read",
    "CancelMessage": "manage",
    "RetryMessages": "manage",
    "EraseRecipient": "admin",
}
# What an allowed call ends with here (no such message, a watch that sees nothing).
ALLOWED_ENDINGS = {
    "GetDeliveryStatus": grpc.StatusCode.NOT_FOUND,
    "CancelMessage": grpc.StatusCode.NOT_FOUND,
    "WatchDeliveryStatus": grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize("rpc", list(CALLS))
@pytest.mark.parametrize("token", ["sender", "reader", "manager", "root"])
async def test_each_scope_against_each_rpc(stub: Stub, db_path: Path, token: str, rpc: str) -> None:
    scope = TOKENS[token]
    before = [
        await asyncio.to_thread(count_rows, db_path, t) for t in ("messages", "status_events")
    ]
    allowed = scope == "admin" or NEEDS[rpc] == scope
    if allowed:
        expected = ALLOWED_ENDINGS.get(rpc)
        if expected is None:
            await CALLS[rpc](stub, _as(token))
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await CALLS[rpc](stub, _as(token))
            assert info.value.code() == expected
        return
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await CALLS[rpc](stub, _as(token))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    detail = _error_info(info.value)
    assert detail.reason == "MISSING_SCOPE"
    assert dict(detail.metadata) == {"scope": NEEDS[rpc]}
    after = [await asyncio.to_thread(count_rows, db_path, t) for t in ("messages", "status_events")]
    assert after == before  # nothing changed


async def _send(stub: Stub, who: str, **kw: Any) -> str:
    kw.setdefault("body", f"from {who}")
    reply = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", tags=["t"], **kw), metadata=_as(who)
    )
    return reply.message_id


async def test_a_caller_sees_and_acts_on_only_its_own_messages(
    scoped: NotifierServer, stub: Stub
) -> None:
    later = pb.SendMessageRequest().send_at
    later.FromSeconds(int(time.time()) + 3600)
    mine = await _send(stub, "a", send_at=later)
    theirs = await _send(stub, "b", send_at=later)
    for call in (
        stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mine), metadata=_as("b")),
        stub.CancelMessage(pb.CancelMessageRequest(message_id=mine), metadata=_as("b")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.WatchDeliveryStatus(
            pb.WatchDeliveryStatusRequest(message_ids=[mine]), metadata=_as("b")
        ):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    retried = await stub.RetryMessages(
        pb.RetryMessagesRequest(message_ids=[mine]), metadata=_as("b")
    )
    assert [(s.message_id, s.reason) for s in retried.skipped] == [(mine, "not found")]

    listed = await stub.ListMessages(pb.ListMessagesRequest(), metadata=_as("b"))
    assert [m.message_id for m in listed.messages] == [theirs]
    metrics = await stub.GetMetrics(pb.GetMetricsRequest(), metadata=_as("b"))
    assert (metrics.total, metrics.scheduled) == (1, 1)
    everything = await stub.ListMessages(pb.ListMessagesRequest(), metadata=_as("root"))
    assert {m.message_id for m in everything.messages} == {mine, theirs}
    assert (await stub.GetMetrics(pb.GetMetricsRequest(), metadata=_as("root"))).total == 2

    # B's tag watch sees B's cancel, never A's, though both carry the tag.
    watch = await watching(scoped, stub, _as("b"), tag="t")
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=mine), metadata=_as("a"))
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=theirs), metadata=_as("b"))
    (seen,) = await read_changes(watch, 1)
    watch.cancel()
    assert seen.message_id == theirs

    # The history names the token that canceled each; the admin reads both.
    for mid, actor in ((mine, "a"), (theirs, "b")):
        got = await stub.GetDeliveryStatus(
            pb.GetDeliveryStatusRequest(message_id=mid), metadata=_as("root")
        )
        canceled = [e for e in got.history if e.status == pb.MESSAGE_STATUS_CANCELED]
        assert [e.actor for e in canceled] == [actor]
        assert all(e.actor == "" for e in got.history if e.status != pb.MESSAGE_STATUS_CANCELED)


async def test_retry_records_the_operator(stub: Stub, db_path: Path) -> None:
    mid = await _send(stub, "a")
    # Make it retryable as an operator would find it: failed.
    await asyncio.to_thread(_fail, db_path, mid)
    reply = await stub.RetryMessages(pb.RetryMessagesRequest(message_ids=[mid]), metadata=_as("a"))
    assert list(reply.message_ids) == [mid]
    got = await stub.GetDeliveryStatus(
        pb.GetDeliveryStatusRequest(message_id=mid), metadata=_as("a")
    )
    assert (got.history[-1].source, got.history[-1].actor) == ("operator", "a")


def _fail(db_path: Path, mid: str) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE messages SET status = 'failed' WHERE id = ?", (mid,))


async def test_sender_selection_filters_and_restrictions(stub: Stub, db_path: Path) -> None:
    branded = await _send(stub, BRAND_ONLY, sender="brand")
    plain = await _send(stub, "root")
    got = await stub.GetDeliveryStatus(
        pb.GetDeliveryStatusRequest(message_id=branded), metadata=_as(BRAND_ONLY)
    )
    assert got.message.sender == "brand"
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(sender="brand")), metadata=_as("root")
    )
    assert [m.message_id for m in listed.messages] == [branded]
    by_default = await stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(sender="default")), metadata=_as("root")
    )
    assert [m.message_id for m in by_default.messages] == [plain]
    metrics = await stub.GetMetrics(pb.GetMetricsRequest(sender="brand"), metadata=_as("root"))
    assert metrics.total == 1

    before = await asyncio.to_thread(count_rows, db_path, "messages")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _send(stub, "root", sender="nope")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(info.value) == ["sender"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListMessages(
            pb.ListMessagesRequest(filter=pb.MessageFilter(sender="nope")), metadata=_as("root")
        )
    assert _violations(info.value) == ["filter.sender"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetMetrics(pb.GetMetricsRequest(sender="nope"), metadata=_as("root"))
    assert _violations(info.value) == ["sender"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _send(stub, BRAND_ONLY)  # the default sender, which this token may not use
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _error_info(info.value).reason == "SENDER_NOT_ALLOWED"
    request = pb.SendBulkRequest(
        defaults=pb.BulkContent(body="b"),
        items=[pb.BulkItem(correlation_id="x", to="+14155550103")],
    )
    results = [r async for r in stub.SendBulk(iter([request]), metadata=_as(BRAND_ONLY))]
    assert results[0].results[0].error.code == "PERMISSION_DENIED"
    assert await asyncio.to_thread(count_rows, db_path, "messages") == before
    request.defaults.sender = "brand"
    results = [r async for r in stub.SendBulk(iter([request]), metadata=_as(BRAND_ONLY))]
    assert results[0].results[0].HasField("accepted")
    # Admin alerts go out from the default sender, which this token may not use.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await CALLS["NotifyAdmins"](stub, _as(BRAND_ONLY))
    assert _error_info(info.value).reason == "SENDER_NOT_ALLOWED"


def test_the_banner_lists_names_and_scopes_never_digests(db_path: Path) -> None:
    lines = "\n".join(_security(_settings(db_path)))
    assert "7 accepted" in lines
    assert "reader (read)" in lines
    assert "brandonly (read+send senders=brand)" in lines
    for name in [*TOKENS, BRAND_ONLY]:
        assert token_digest(_token(name)) not in lines
        assert token_digest(_token(name))[:16] not in lines
