"""Templates from Twilio's Content API (``GET /v1/Content/{Sid}``) for the pre-flight,
through the official SDK's async client, cached for a while.

A template changes rarely and every send of it would ask again, so a found template is
kept for ``ttl_seconds``; concurrent sends of one template share one request. An unknown
SID is not cached: a template created a moment ago must work at once. When the API
cannot answer (unreachable, 5xx, 401/403, timeout) the lookup raises TemplateUnavailable
and the sends go on by the local rules; for ``OUTAGE_SECONDS`` after that no request is
made, so an outage does not add a timeout to every send.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from notifier.domain.templates import Template, TemplateUnavailable, placeholders

log = logging.getLogger(__name__)
_sdk_logger = logging.getLogger("notifier.twilio_sdk")

OUTAGE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ContentApiConfig:
    base_url: str  # NOTIFIER_CONTENT_API_BASE_URL
    account_sid: str
    username: str  # the account SID, or an API key SK…
    password: str
    timeout_seconds: float
    ttl_seconds: float  # NOTIFIER_TEMPLATE_CACHE_TTL; 0 asks every time


class ContentApiTemplates:
    """A TemplateSource (domain.ports) over Twilio's Content API."""

    def __init__(
        self,
        config: ContentApiConfig,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._http = AsyncTwilioHttpClient(logger=_sdk_logger)  # no SDK retries
        client = Client(
            config.username, config.password, account_sid=config.account_sid, http_client=self._http
        )
        client.content.base_url = config.base_url.rstrip("/")
        self._contents = client.content.v1.contents
        self._cache: dict[str, tuple[float, Template]] = {}
        self._pending: dict[str, asyncio.Future[Template | None]] = {}
        self._down_until = float("-inf")
        self._requests = Counter(
            "notifier_content_api_requests",
            "Requests to Twilio's Content API for the template pre-flight, by outcome "
            "(found, not_found, unavailable)",
            ["outcome"],
            registry=registry,
        )
        self._fallbacks = Counter(
            "notifier_template_check_fallbacks",
            "Template pre-flights done by the local rules only because the Content API "
            "could not answer",
            registry=registry,
        )

    async def template(self, content_sid: str) -> Template | None:
        now = self._clock()
        cached = self._cache.get(content_sid)
        if cached is not None and now < cached[0]:
            return cached[1]
        if now < self._down_until:
            self._fallbacks.inc()
            raise TemplateUnavailable("the Content API failed less than 30 s ago")
        pending = self._pending.get(content_sid)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(content_sid))
            self._pending[content_sid] = pending
            pending.add_done_callback(functools.partial(self._settled, content_sid))
        try:
            return await asyncio.shield(pending)
        except TemplateUnavailable:
            self._fallbacks.inc()
            raise

    def _settled(self, content_sid: str, done: asyncio.Future[Template | None]) -> None:
        """Forget a finished request; its outcome was given to whoever still waited
        (retrieved here too, so a fetch whose callers all gave up logs no warning)."""
        self._pending.pop(content_sid, None)
        if not done.cancelled():
            done.exception()

    async def _fetch(self, content_sid: str) -> Template | None:
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                found = await self._contents(content_sid).fetch_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                self._requests.labels("not_found").inc()
                return None
            raise self._down(f"the Content API answered HTTP {exc.status}") from None
        except TimeoutError:
            raise self._down("no answer from the Content API in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._down(f"cannot reach the Content API: {type(exc).__name__}") from None
        self._requests.labels("found").inc()
        template = Template(content_sid, placeholders(found.types or {}))
        if self._config.ttl_seconds > 0:
            self._cache[content_sid] = (self._clock() + self._config.ttl_seconds, template)
        return template

    def _down(self, why: str) -> TemplateUnavailable:
        self._requests.labels("unavailable").inc()
        self._down_until = self._clock() + OUTAGE_SECONDS
        log.warning("%s; template pre-flight by local rules for %gs", why, OUTAGE_SECONDS)
        return TemplateUnavailable(why)

    async def close(self) -> None:
        await self._http.close()
