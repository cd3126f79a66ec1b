"""Callers with tokens: a server in this process on a SQLite file, a caller's token and
its metadata, and the request the authentication and TLS tests send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from notifier.config import Settings, load_settings
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb

TOKEN = "s3cret-caller-token-1"
SEND = "notifier.v1.Notifier/SendMessage"
REQUEST = pb.SendMessageRequest(to="+14155550100", body="hello")


def server_settings(db_path: Path, **extra: Any) -> Settings:
    """A server on the SQLite file ``db_path`` at an ephemeral port; ``extra`` adds settings."""
    return load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2,
        **extra,
    )


async def serve(settings: Settings) -> NotifierServer:
    """A started server in this process (the caller stops it)."""
    server = await create_server(settings)
    await server.start()
    return server


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying ``token`` as a bearer token."""
    return (("authorization", f"Bearer {token}"),)
