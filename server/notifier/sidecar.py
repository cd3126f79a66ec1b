"""The webhook sidecar: Twilio's status callbacks and inbound messages on their port."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from pydantic import AnyHttpUrl

from notifier.asgi_server import InProcessServer
from notifier.config import Settings
from notifier.domain.inbound import Keywords
from notifier.startup import StartupError, closed_on_failure, listen, prepare_storage, split_addr
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from notifier.telemetry import DISABLED, Telemetry
from notifier.webhooks.app import WebhookConfig, create_webhook_app


def sidecar_urls(settings: Settings, base: str) -> Settings:
    """Development default: Twilio calls the sidecar itself at ``base``."""
    update: dict[str, Any] = {}
    if settings.status_callback_url is None:
        update["status_callback_url"] = AnyHttpUrl(base + settings.status_path)
    if settings.webhook_url is None:
        update["webhook_url"] = AnyHttpUrl(base + settings.inbound_path)
    return settings.model_copy(update=update) if update else settings


@dataclass(slots=True)
class Sidecar:
    """The webhook sidecar on its port, with the storage it uses.

    ``cleanup`` holds what stop() undoes, last built first: the HTTP server, then the
    database when the sidecar opened it itself, then its listening socket.
    """

    http: InProcessServer
    db: Database
    cleanup: contextlib.AsyncExitStack

    @property
    def url(self) -> str:
        return self.http.url

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.cleanup.aclose()


def webhook_config(settings: Settings) -> WebhookConfig:
    """What the sidecar checks and serves; the public URLs must be known by now."""
    return WebhookConfig(
        status_url=str(settings.status_callback_url),
        inbound_url=str(settings.webhook_url),
        status_path=settings.status_path,
        inbound_path=settings.inbound_path,
        tokens=settings.webhook_tokens,
        max_bytes=settings.webhook_max_bytes,
        keywords=Keywords(
            frozenset(settings.opt_out_keywords), frozenset(settings.opt_in_keywords)
        ),
    )


def _public_urls(settings: Settings, base: str) -> Settings:
    """The settings with the URLs Twilio calls (in development, the sidecar's own)."""
    if settings.is_development:
        settings = sidecar_urls(settings, base)
    if settings.status_callback_url is None or settings.webhook_url is None:
        raise StartupError("set STATUS_CALLBACK_URL and WEBHOOK_URL: the public URLs Twilio calls")
    return settings


async def create_sidecar(
    settings: Settings, db: Database | None = None, telemetry: Telemetry = DISABLED
) -> tuple[Sidecar, Settings]:
    """The sidecar bound to NOTIFIER_HTTP_ADDR; returns it with the settings it implies
    (in development, Twilio's URLs default to the sidecar's own). Without ``db`` it
    opens (and on stop disposes of) its own."""
    host = split_addr(settings.http_addr)[0]
    sock = listen(settings.http_addr)
    async with closed_on_failure() as cleanup:
        cleanup.callback(sock.close)
        settings = _public_urls(settings, f"http://{host}:{sock.getsockname()[1]}")
        if db is None:
            db = await prepare_storage(settings, telemetry)
            cleanup.push_async_callback(db.dispose)
        repository = Repository(
            db, fallback=settings.fallback_policy(), retry=settings.retry_policy()
        )
        cleanup.push_async_callback(repository.settle)  # after the server, before dispose
        app = create_webhook_app(repository, webhook_config(settings))
        telemetry.instrument_app(app)
        http = InProcessServer(app, host, sock=sock)
        cleanup.push_async_callback(http.stop)
        return Sidecar(http, db, cleanup), settings
