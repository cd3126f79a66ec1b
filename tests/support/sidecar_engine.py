"""A server wired to the emulator whose callbacks reach a real webhook sidecar: the whole
path of a callback, and of a fetch when the callback does not come (reconciliation)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from notifier.config import Settings
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, Sidecar, create_sidecar
from tests.support.databases import TestDb
from tests.support.engine import Engine, engine_settings, start_engine


@dataclass
class Running:
    engine: Engine
    server: NotifierServer
    sidecar: Sidecar
    settings: Settings

    async def restart_sidecar(self) -> None:
        """A new sidecar on the same port (Twilio keeps calling the same URL)."""
        port = self.sidecar.url.rsplit(":", 1)[1]
        settings = self.settings.model_copy(update={"http_addr": f"127.0.0.1:{port}"})
        self.sidecar, _ = await create_sidecar(settings)
        await self.sidecar.start()


@asynccontextmanager
async def engine_with_sidecar(
    database: TestDb, emulator: EmulatorServer, **env: Any
) -> AsyncIterator[Running]:
    """The server and its sidecar on ephemeral ports; ``env`` overrides settings."""
    settings = engine_settings(
        database, emulator, STATUS_CALLBACK_URL=None, NOTIFIER_HTTP_ADDR="127.0.0.1:0", **env
    )
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    channel: grpc.aio.Channel | None = None
    server: NotifierServer | None = None
    running: Running | None = None
    try:
        server, channel = await start_engine(settings)
        running = Running(Engine(server, channel), server, sidecar, settings)
        yield running
    finally:
        if channel is not None:
            await channel.close()
        if server is not None:
            await server.stop(grace=1)
        await (running.sidecar if running is not None else sidecar).stop()
