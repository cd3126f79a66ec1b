"""WatchDeliveryStatus through a gRPC server on a port over a SQLite file (no
dispatcher): what a watch is sent, when it ends, and how one poller serves them all.

With the dispatcher, the emulator and the webhook sidecar: tests/e2e/test_watch_sidecar.py,
and tests/process/test_watch_sidecar_process.py with the sidecar as a process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2

from notifier.domain.watch import StatusChange, WatchSpec
from notifier.server import NotifierServer
from notifier.status_feed import StatusFeed
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.rpc import details, field_violations
from tests.support.watching import feed_of, in_a_second, read_changes, until, watching

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

TO = "+14155550100"


async def test_include_current_sends_the_state_first_then_changes(
    server: NotifierServer, stub: Stub
) -> None:
    a = (await stub.SendMessage(pb.SendMessageRequest(to=TO, body="a"))).message_id
    b = await stub.SendMessage(pb.SendMessageRequest(to=TO, body="b", send_at=in_a_second()))
    call = stub.WatchDeliveryStatus(
        pb.WatchDeliveryStatusRequest(message_ids=[b.message_id, a, a], include_current=True)
    )
    current = await read_changes(call, 2)
    assert [(c.message_id, c.status, c.event.source) for c in current] == [
        (b.message_id, pb.MESSAGE_STATUS_SCHEDULED, "api"),
        (a, pb.MESSAGE_STATUS_PENDING, "api"),
    ]
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=a))
    (canceled,) = await read_changes(call, 1)
    assert (canceled.message_id, canceled.status) == (a, pb.MESSAGE_STATUS_CANCELED)
    assert (canceled.event.status, canceled.event.source) == (pb.MESSAGE_STATUS_CANCELED, "api")
    call.cancel()


async def test_without_include_current_only_later_changes_are_sent(
    server: NotifierServer, stub: Stub
) -> None:
    a = (await stub.SendMessage(pb.SendMessageRequest(to=TO, body="a"))).message_id
    call = await watching(server, stub, message_ids=[a])
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=a))
    (only,) = await read_changes(call, 1)
    assert only.event.status == pb.MESSAGE_STATUS_CANCELED  # not the earlier PENDING
    call.cancel()


async def refused(stub: Stub, **request: Any) -> grpc.aio.AioRpcError:
    call = stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(**request), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    return info.value


async def test_bad_requests_are_invalid_argument(server: NotifierServer, stub: Stub) -> None:
    empty = await refused(stub)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(empty) == {"message_ids": "set message_ids, tag, or both"}
    bad = await refused(stub, message_ids=["nope"], tag="has space")
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(bad)) == {"message_ids[0]", "tag"}
    too_many = await refused(stub, message_ids=[f"01J{i:023d}" for i in range(1001)])
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1,000 ids" in field_violations(too_many)["message_ids"]
    assert feed_of(server).subscriber_count == 0


async def test_unknown_ids_are_not_found(server: NotifierServer, stub: Stub) -> None:
    known = (await stub.SendMessage(pb.SendMessageRequest(to=TO, body="k"))).message_id
    unknown = "01J0000000000000000000ZZZZ"
    err = await refused(stub, message_ids=[known, unknown])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    (info,) = [d for d in details(err) if isinstance(d, error_details_pb2.ResourceInfo)]
    assert info.resource_name == unknown
    assert unknown in (err.details() or "")
    assert feed_of(server).subscriber_count == 0


async def test_cancel_and_deadline_end_the_watch_quietly(
    server: NotifierServer, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mid = (await stub.SendMessage(pb.SendMessageRequest(to=TO, body="c"))).message_id
    call = await watching(server, stub, message_ids=[mid], tag="t")
    call.cancel()
    await until(lambda: feed_of(server).subscriber_count == 0)
    assert await call.code() == grpc.StatusCode.CANCELLED
    short = stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(tag="t"), timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await short.read()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until(lambda: feed_of(server).subscriber_count == 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_watch_that_falls_behind_is_dropped_alone(
    server: NotifierServer, stub: Stub
) -> None:
    feed = feed_of(server)
    feed.poll_seconds = 30  # polls only when woken: every change below lands in one batch
    feed.queue_size = 1
    busy = await watching(server, stub, tag="busy")
    calm = await watching(server, stub, tag="calm")
    for body in ("1", "2", "3"):
        await stub.SendMessage(pb.SendMessageRequest(to=TO, body=body, tags=["busy"]))
    quiet = await stub.SendMessage(pb.SendMessageRequest(to=TO, body="q", tags=["calm"]))
    feed.wake()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_changes(busy, 1)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "watch fell behind; reopen it"
    (change,) = await read_changes(calm, 1)
    assert change.message_id == quiet.message_id
    assert feed.subscriber_count == 1  # only the calm watch is left
    calm.cancel()


class CountingStore:
    """The real repository, counting the feed's polls."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self.polls = 0

    async def last_event_id(self) -> int:
        return await self._repository.last_event_id()

    async def events_after(
        self,
        after_id: int,
        *,
        limit: int,
        message_ids: Sequence[str] = (),
        tag: str | None = None,
    ) -> list[StatusChange]:
        self.polls += 1
        return await self._repository.events_after(
            after_id, limit=limit, message_ids=message_ids, tag=tag
        )

    async def events_with_ids(self, event_ids: Sequence[int]) -> list[StatusChange]:
        return await self._repository.events_with_ids(event_ids)

    async def current_states(self, message_ids: Sequence[str]) -> list[StatusChange]:
        return await self._repository.current_states(message_ids)


async def test_one_poller_serves_every_watch(server: NotifierServer, stub: Stub) -> None:
    """The feed queries the database once per poll however many watch, and not at all
    when nobody does; each watch gets only what it asked for."""
    store = CountingStore(Repository(server.db))
    feed = StatusFeed(store, poll_seconds=0.05)
    try:
        watches = [feed.watch(WatchSpec(tag=f"w{i}")) for i in range(20)]
        waiting = [asyncio.create_task(anext(w)) for w in watches]
        await until(lambda: feed.subscriber_count == 20)
        sent = await stub.SendMessage(pb.SendMessageRequest(to=TO, body="x", tags=["w7"]))
        await until(waiting[7].done)
        assert waiting[7].result().message.id == sent.message_id
        polls = store.polls
        await asyncio.sleep(0.3)
        assert store.polls - polls <= 8  # ~6 polls in 0.3 s, not 20 watches x 6
        assert not any(t.done() for i, t in enumerate(waiting) if i != 7)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for w in watches:
            await w.aclose()
        assert feed.subscriber_count == 0
        await asyncio.sleep(0.1)
        idle = store.polls
        await asyncio.sleep(0.3)
        assert store.polls == idle  # nobody watches: no queries
    finally:
        await feed.close()


async def test_shutdown_ends_watches_with_unavailable(server: NotifierServer, stub: Stub) -> None:
    call = await watching(server, stub, tag="t")
    feed = feed_of(server)
    await feed.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_changes(call, 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_changes(stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(tag="t")), 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
