"""A Notifier server in this process wired to the test's Twilio emulator, and a stub
to drive it: the delivery engine's real path (gRPC, outbox, dispatcher, HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from notifier.config import Settings, load_settings
from notifier.emulator import DEV_FROM
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import TestDb

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

TO = "+14155550100"
Status = pb.GetDeliveryStatusResponse


def engine_settings(db: Path | TestDb, emu: EmulatorServer, **env: Any) -> Settings:
    """Settings for a server wired to ``emu``; ``db`` is a SQLite file or a TestDb."""
    values: dict[str, Any] = {
        "NOTIFIER_DATABASE_URL": db.url if isinstance(db, TestDb) else f"sqlite+aiosqlite:///{db}",
        "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
        "TWILIO_ACCOUNT_SID": emu.account_sid,
        "TWILIO_AUTH_TOKEN": emu.auth_token,
        "TWILIO_WHATSAPP_FROM": DEV_FROM,
        "TWILIO_API_BASE_URL": emu.url,
        "STATUS_CALLBACK_URL": "http://127.0.0.1:9/api/v1/whatsapp/status",
        "NOTIFIER_RETRY_BASE_SECONDS": 0.05,
        "NOTIFIER_RETRY_CAP_SECONDS": 0.2,
        "NOTIFIER_RETRY_MAX_ATTEMPTS": 3,
        "NOTIFIER_TWILIO_TIMEOUT_SECONDS": 0.5,
        "NOTIFIER_RATE_LIMIT_PER_SECOND": 1000,
    }
    values.update(env)
    return load_settings(**values)


class Engine:
    """A running server wired to the emulator, with a stub to call it."""

    def __init__(self, server: NotifierServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.stub: Stub = notifier_pb2_grpc.NotifierStub(channel)

    async def send(self, to: str = TO, **kw: Any) -> str:
        kw.setdefault("body", "hello")
        reply = await self.stub.SendMessage(pb.SendMessageRequest(to=to, **kw))
        return reply.message_id

    async def status(self, mid: str) -> Status:
        return await self.stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))

    async def until(self, mid: str, done: Callable[[Status], bool], within: float = 15) -> Status:
        deadline = time.monotonic() + within
        while True:
            current = await self.status(mid)
            if done(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting; last state:\n{current}")
            await asyncio.sleep(0.02)

    async def until_status(self, mid: str, status: int, within: float = 15) -> Status:
        return await self.until(mid, lambda s: s.message.status == status, within)


async def start_engine(settings: Settings) -> tuple[NotifierServer, grpc.aio.Channel]:
    server = await create_server(settings)
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


def requests_to(emu: EmulatorServer, body: str) -> int:
    return sum(1 for r in emu.state.requests if r.param("Body") == body)
