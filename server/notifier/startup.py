"""What every process's start shares: the error that stops it, listening sockets, and
storage migrated (or checked) before anything uses it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

from notifier.asgi_server import bind
from notifier.config import Settings
from notifier.storage.engine import Database, create_database
from notifier.storage.migrate import pending_revisions, upgrade
from notifier.telemetry import DISABLED, Telemetry


class StartupError(Exception):
    """The server cannot start; the message says what to do."""


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def listen(addr: str) -> socket.socket:
    host, port = split_addr(addr)
    try:
        return bind(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {addr}: {exc.strerror}") from exc


async def prepare_storage(settings: Settings, telemetry: Telemetry = DISABLED) -> Database:
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
    # Only after migrating: schema work at startup belongs to no request's trace.
    telemetry.instrument_engines([db.writer, db.reader])
    return db


@contextlib.asynccontextmanager
async def closed_on_failure() -> AsyncIterator[contextlib.AsyncExitStack]:
    """The exit stack a builder registers each cleanup on as it builds. If building
    fails, what was built so far is undone; if not, the stack is the caller's to keep
    (and close on stop)."""
    cleanup = contextlib.AsyncExitStack()
    try:
        yield cleanup
    except BaseException:
        await cleanup.aclose()
        raise
