"""WatchDeliveryStatus through the whole path on real ports: a gRPC server over a SQLite
file, the dispatcher sending to the Twilio emulator over HTTP, and the emulator's signed
status callbacks coming back through the real webhook sidecar in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from notifier.config import Settings
from notifier.emulator.server import EmulatorServer
from notifier.server import create_sidecar
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.engine import Engine, engine_settings, start_engine
from tests.support.watching import (
    CALLBACKS,
    LIFECYCLE,
    SOURCES,
    feed_of,
    in_a_second,
    read_changes,
    until,
    watching,
)


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
