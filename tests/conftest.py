"""Shared fixtures: a real grpc.aio server on an ephemeral port over a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from notifier.config import Settings, load_settings
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2_grpc


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """The Twilio emulator on an ephemeral port, standing in for Twilio."""
    async with EmulatorServer() as emu:
        yield emu


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "notifier.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2,
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[NotifierServer]:
    notifier = await create_server(settings)
    await notifier.start()
    yield notifier
    await notifier.stop(grace=1)


@pytest.fixture
def address(server: NotifierServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> notifier_pb2_grpc.NotifierAsyncStub:
    return notifier_pb2_grpc.NotifierStub(channel)


def count_rows(db_path: Path, table: str) -> int:
    """Read the database the way an operator would: a separate sqlite3 connection."""
    with sqlite3.connect(db_path) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(n)
