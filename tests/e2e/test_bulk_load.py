"""SendBulk under load through the real path: a backlog of bulk items being sent while a
single send goes out at once, and a client pushing into storage slower than it.

Moved out of tests/api/test_bulk.py to keep ``make test-fast`` under a minute: each
of these takes seconds of real sending or of real waiting (2.6 s and 3.5 s here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from notifier.emulator.server import EmulatorServer
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.bulk import bulk_requests
from tests.support.databases import count_rows
from tests.support.engine import Engine, engine_settings, start_engine

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub


async def test_single_sends_are_not_stuck_behind_a_bulk_backlog(
    db_path: Path, emulator: EmulatorServer
) -> None:
    server, channel = await start_engine(
        engine_settings(db_path, emulator, NOTIFIER_RATE_LIMIT_PER_SECOND=50)
    )
    eng = Engine(server, channel)
    try:
        async for _ in eng.stub.SendBulk(bulk_requests(500)):
            pass  # 500 bulk items: 10 s of sending at 50/s
        await asyncio.sleep(0.3)
        start = time.monotonic()
        mid = await eng.send(body="your code is 123456")
        await eng.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
        waited = time.monotonic() - start
    finally:
        await channel.close()
        await server.stop(grace=0.5)
    assert waited < 2.0  # not the 9+ s the bulk backlog would take
    assert len(emulator.state.accepted) < 200  # the backlog was still going out


async def test_a_slow_database_slows_the_stream_instead_of_growing_memory(
    stub: Stub, monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    original = Repository.add_messages

    async def slow(self: Repository, *args: Any, **kwargs: Any) -> Any:
        """Storage that takes 0.3 s per batch, to see what a fast client can push into it."""
        await asyncio.sleep(0.3)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Repository, "add_messages", slow)
    call = stub.SendBulk()
    written = 0
    body = "y" * 500  # large items fill the transport window quickly

    async def writer() -> None:
        nonlocal written
        for start in range(0, 50_000, 100):
            items = [
                pb.BulkItem(correlation_id=str(i), to="+14155550100", body=body)
                for i in range(start, start + 100)
            ]
            await call.write(pb.SendBulkRequest(items=items))
            written += 100
        await call.done_writing()

    task = asyncio.create_task(writer())
    first = await call.read()
    assert first is not grpc.aio.EOF

    async def backlog() -> int:
        """Items the client got into the stream but storage has not committed."""
        return written - await asyncio.to_thread(count_rows, db_path, "messages")

    await asyncio.sleep(1.5)
    early = await backlog()
    await asyncio.sleep(1.5)  # five more slow batches
    late = await backlog()
    # The client is held back by flow control: the backlog stops growing (the server
    # keeps at most 2,000 items pending; the rest is gRPC's bounded transport window)
    # while storage works through it, instead of the 50,000 items piling up.
    assert late <= early + 500
    assert late < 20_000
    assert written < 50_000
    task.cancel()
    call.cancel()
