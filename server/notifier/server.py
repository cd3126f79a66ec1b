"""The composition root: builds storage, the domain service and the gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from notifier_proto.v1 import notifier_pb2, notifier_pb2_grpc

from notifier.api.errors import ErrorInterceptor
from notifier.api.service import NotifierServicer
from notifier.config import Settings
from notifier.domain.service import MessageService
from notifier.health import StorageHealth
from notifier.storage.engine import Database, create_database
from notifier.storage.migrate import pending_revisions, upgrade
from notifier.storage.repository import Repository

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says what to do."""


@dataclass(slots=True)
class NotifierServer:
    server: grpc.aio.Server
    port: int
    health: StorageHealth
    db: Database

    async def start(self) -> None:
        await self.server.start()
        await self.health.check()
        self.health.start()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish within ``grace`` seconds."""
        await self.health.stop()
        await self.server.stop(grace)
        await self.db.dispose()


async def prepare_storage(settings: Settings) -> Database:
    db = create_database(settings.database_url)
    if settings.should_migrate_on_start:
        await upgrade(db.writer)
    else:
        pending = await pending_revisions(db.writer)
        if pending:
            await db.dispose()
            raise StartupError(
                f"the database schema is behind ({len(pending)} migration(s) pending): "
                "run `notifier db upgrade`"
            )
    return db


async def create_server(settings: Settings, addr: str | None = None) -> NotifierServer:
    """Build the gRPC server bound to ``addr`` (port 0 picks a free one)."""
    db = await prepare_storage(settings)
    repository = Repository(db)
    messages = MessageService(
        repository, idempotency_ttl_ms=int(settings.idempotency_ttl_hours * 3600 * 1000)
    )
    health = StorageHealth(repository, settings.health_interval_seconds)
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(health.report_down)],
        # Without this a second server on the same port would silently share it.
        options=[("grpc.so_reuseport", 0)],
    )
    notifier_pb2_grpc.add_NotifierServicer_to_server(NotifierServicer(messages), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    names = (
        notifier_pb2.DESCRIPTOR.services_by_name["Notifier"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = addr or settings.grpc_addr
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        await db.dispose()
        raise StartupError(f"cannot listen on {address}: {exc}") from exc
    return NotifierServer(server=server, port=port, health=health, db=db)
