"""WatchDeliveryStatus through the real path: a gRPC server on a port over a SQLite file,
the dispatcher sending to the Twilio emulator over HTTP, and the emulator's signed
status callbacks coming back through the real webhook sidecar, in this process or in
another one (``notifier serve webhooks``) that shares only the database."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from notifier.config import Settings
from notifier.domain.watch import StatusChange, WatchSpec
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, create_sidecar
from notifier.status_feed import StatusFeed
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from tests.helpers import details, field_violations
from tests.process import notifier_env
from tests.test_delivery import Engine, engine_settings, start_engine

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

TO = "+14155550100"
WatchCall = grpc.aio.UnaryStreamCall[pb.WatchDeliveryStatusRequest, pb.WatchDeliveryStatusResponse]
# Callbacks a little apart, so the dispatcher has recorded QUEUED before "sent" arrives
# (a callback that overtakes it would rightly leave QUEUED out of the history).
CALLBACKS = Faults(sent_after_seconds=0.15, delivered_after_seconds=0.25, read_after_seconds=0.35)
LIFECYCLE = [
    pb.MESSAGE_STATUS_QUEUED,
    pb.MESSAGE_STATUS_SENT,
    pb.MESSAGE_STATUS_DELIVERED,
    pb.MESSAGE_STATUS_READ,
]
SOURCES = ["dispatcher", "callback", "callback", "callback"]


async def read_changes(
    call: WatchCall, n: int, within: float = 10
) -> list[pb.WatchDeliveryStatusResponse]:
    """The next ``n`` responses of a watch, failing after ``within`` seconds."""
    out: list[pb.WatchDeliveryStatusResponse] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            response = await call.read()
            assert response is not grpc.aio.EOF, f"stream ended after {out}"
            assert isinstance(response, pb.WatchDeliveryStatusResponse)
            out.append(response)
    return out


async def until(check: Callable[[], bool], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def feed_of(server: NotifierServer) -> StatusFeed:
    assert server.feed is not None
    return server.feed


async def watching(server: NotifierServer, stub: Stub, **request: Any) -> WatchCall:
    """Open a watch and return once the server has registered it (the stream carries
    nothing until a change, so there is no reply to wait for)."""
    before = feed_of(server).subscriber_count
    call = stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(**request))
    await until(lambda: feed_of(server).subscriber_count > before)
    return call


def in_a_second() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(time.time() * 1000) + 1000)
    return ts


@pytest.fixture
async def with_sidecar(
    db_path: Path, emulator: EmulatorServer
) -> AsyncIterator[tuple[Engine, Settings]]:
    """Dispatcher wired to the emulator, callbacks to the real sidecar in this process
    (its own storage engine over the same file, as a separate process would have)."""
    emulator.faults = CALLBACKS
    settings = engine_settings(
        db_path, emulator, STATUS_CALLBACK_URL=None, NOTIFIER_HTTP_ADDR="127.0.0.1:0"
    )
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    server, channel = await start_engine(settings)
    yield Engine(server, channel), settings
    await channel.close()
    await server.stop(grace=1)
    await sidecar.stop()


async def test_watch_by_id_sees_dispatcher_and_callbacks_in_order(
    with_sidecar: tuple[Engine, Settings],
) -> None:
    engine, settings = with_sidecar
    assert str(settings.status_callback_url).endswith("/api/v1/whatsapp/status")
    mid = await engine.send(body="scheduled", send_at=in_a_second())
    assert (await engine.status(mid)).message.status == pb.MESSAGE_STATUS_SCHEDULED
    call = await watching(engine.server, engine.stub, message_ids=[mid])
    changes = await read_changes(call, 4)
    assert [c.event.status for c in changes] == LIFECYCLE
    assert [c.event.source for c in changes] == SOURCES
    assert all(c.message_id == mid and c.message.message_id == mid for c in changes)
    assert all(c.event.applied for c in changes)
    # ``status`` and ``message`` are the message as it is when the change is read.
    assert changes[-1].status == changes[-1].message.status == pb.MESSAGE_STATUS_READ
    assert changes[-1].message.twilio_sid.startswith("SM")
    call.cancel()
    await until(lambda: feed_of(engine.server).subscriber_count == 0)


async def test_watch_by_tag_sees_messages_created_after_it_opened(
    with_sidecar: tuple[Engine, Settings],
) -> None:
    engine, _ = with_sidecar
    call = await watching(engine.server, engine.stub, tag="order-7")
    first = await engine.send(body="one", tags=["order-7", "x"])
    await engine.send(body="untagged")  # never shows up in this watch
    second = await engine.send(to="+14155550101", body="two", tags=["order-7"])
    changes = await read_changes(call, 10)
    by_message: dict[str, list[tuple[int, str]]] = {}
    for change in changes:
        by_message.setdefault(change.message_id, []).append(
            (change.event.status, change.event.source)
        )
    expected = [(pb.MESSAGE_STATUS_PENDING, "api"), *zip(LIFECYCLE, SOURCES, strict=True)]
    assert by_message == {first: expected, second: expected}
    assert list(changes[0].message.tags) == ["order-7", "x"]
    call.cancel()


SERVING_WEBHOOKS = re.compile(r"webhooks serving on (http://[\d.]+:\d+)")


def start_webhooks(
    env: dict[str, str], log_path: Path, timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """``notifier serve webhooks`` as its own process; returns it and its base URL.

    Its output goes to a file, so a chatty sidecar can never block on a full pipe.
    """
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "serve", "webhooks"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = SERVING_WEBHOOKS.search(log_path.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError("webhooks did not start:\n" + log_path.read_text())


async def test_watch_sees_callbacks_a_sidecar_process_records(
    db_path: Path, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.faults = CALLBACKS
    env = notifier_env(db_path, TWILIO_AUTH_TOKEN=emulator.auth_token)
    proc, base = await asyncio.to_thread(start_webhooks, env, tmp_path / "webhooks.log")
    try:
        # This process has no sidecar: every callback lands in the other process.
        server, channel = await start_engine(
            engine_settings(db_path, emulator, STATUS_CALLBACK_URL=f"{base}/api/v1/whatsapp/status")
        )
        try:
            engine = Engine(server, channel)
            call = await watching(server, engine.stub, tag="elsewhere")
            mid = await engine.send(body="via the other process", tags=["elsewhere"])
            changes = await read_changes(call, 5)
            call.cancel()
        finally:
            await channel.close()
            await server.stop(grace=1)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
    assert [c.event.status for c in changes] == [pb.MESSAGE_STATUS_PENDING, *LIFECYCLE]
    assert [c.event.source for c in changes] == ["api", *SOURCES]
    assert {c.message_id for c in changes} == {mid}
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "webhooks.log").read_text()


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
