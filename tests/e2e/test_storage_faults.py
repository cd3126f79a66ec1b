"""Storage goes away under a running server with a dispatcher, and comes back.

Two faults on SQLite: another process holding the write lock (``BEGIN EXCLUSIVE``), and
storage turned read-only. Tests run as root, and root ignores file permissions, so
read-only is made with the immutable attribute (``chattr +i``), which binds root too and
also fails writes through files the server already has open, as a filesystem remounted
read-only does. (A read-only remount itself is refused while SQLite holds its files open
for writing.) Where the attribute is not available the read-only case is skipped.

Either way a caller must see UNAVAILABLE with RetryInfo, health must say NOT_SERVING by
itself, and once storage is back the server recovers with no help and sends every
message accepted before the fault, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2

from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import count_rows
from tests.support.engine import Engine, engine_settings, start_engine
from tests.support.rpc import details, health
from tests.support.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOTAL = 20


def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def _immutable_supported(where: Path) -> bool:
    probe = where / "probe"
    probe.write_text("x")
    try:
        _chattr("+i", [probe])
    except (OSError, subprocess.CalledProcessError):
        return False
    _chattr("-i", [probe])
    return True


@contextlib.asynccontextmanager
async def _locked(db_path: Path) -> AsyncIterator[None]:
    """Another process holds SQLite's write lock (from a thread: the server shares the loop)."""
    locker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
    await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        await asyncio.to_thread(locker.execute, "ROLLBACK")
        locker.close()


@contextlib.asynccontextmanager
async def _read_only(db_path: Path) -> AsyncIterator[None]:
    """The database file, its WAL and its directory become immutable: every write fails.

    Not the ``-shm`` wal-index: SQLite maps it into memory, and growing a mapping whose
    file cannot grow is a SIGBUS that kills the process (tried) rather than a failed write.
    """
    wal = db_path.with_name(db_path.name + "-wal")
    files = [db_path.parent, db_path, *([wal] if wal.exists() else [])]
    await asyncio.to_thread(_chattr, "+i", files)
    try:
        yield
    finally:
        await asyncio.to_thread(_chattr, "-i", files)


FAULTS: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[None]]] = {
    "locked": _locked,
    "read-only": _read_only,
}


def _statuses(db_path: Path) -> Counter[str]:
    with sqlite3.connect(db_path) as conn:
        return Counter(s for (s,) in conn.execute("SELECT status FROM messages"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_storage_fault_is_unavailable_then_recovers_losing_nothing(
    tmp_path: Path, emulator: EmulatorServer, fault: str
) -> None:
    if fault == "read-only" and not await asyncio.to_thread(_immutable_supported, tmp_path):
        pytest.skip("chattr +i is not available here (filesystem or missing capability)")
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    db_path = db_dir / "notifier.db"
    settings = engine_settings(db_path, emulator, NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2)
    server, channel = await start_engine(settings)
    engine = Engine(server, channel)
    try:
        # Accepted before the fault, due while it lasts: they must all go out after it.
        send_at = timestamp_pb2.Timestamp()
        send_at.FromMilliseconds(int(time.time() * 1000) + 1500)
        ids = [await engine.send(body=f"before-{i}", send_at=send_at) for i in range(TOTAL)]
        async with FAULTS[fault](db_path):

            async def not_serving() -> bool:
                return bool(await health(channel) == NOT_SERVING)

            await eventually(not_serving, "health NOT_SERVING on its own")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await engine.send(body="during")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert any(d.DESCRIPTOR.name == "RetryInfo" for d in details(info.value))
            # Past send_at: the dispatcher meets the fault too, and sends nothing.
            await asyncio.sleep(max(0.0, send_at.ToMilliseconds() / 1000 - time.time()) + 0.5)
            assert await health(channel) == NOT_SERVING
            assert emulator.state.accepted == []

        async def serving() -> bool:
            return bool(await health(channel) == SERVING)

        await eventually(serving, "health SERVING again, by itself")
        after = await engine.send(body="after")
        for mid in [*ids, after]:
            await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED, within=30)
    finally:
        await channel.close()
        await server.stop(grace=1)
    sent = Counter(m.body for m in emulator.state.accepted)
    assert sent == Counter({f"before-{i}": 1 for i in range(TOTAL)} | {"after": 1})
    assert count_rows(db_path, "messages") == TOTAL + 1  # "during" was refused, not stored
    assert _statuses(db_path) == Counter({"queued": TOTAL + 1})
