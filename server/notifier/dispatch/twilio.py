"""Sending through Twilio with the official SDK's async client.

Two traps of that client are closed here (../shared/twilio/README.md): it would re-POST
on any 5xx when given ``max_retries`` (duplicate messages), so SDK retries stay off and
Notifier retries by its own policy; and it ignores its ``timeout``, so every call runs
under our own ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifier.dispatch.rate_limit import request_written
from notifier.dispatch.senders import SenderProfile
from notifier.domain.delivery import (
    TWILIO_CODES,
    ErrorKind,
    OutgoingMessage,
    ProviderError,
    SendReceipt,
    classify,
    meaning,
)
from notifier.domain.errors import PreconditionFailed
from notifier.domain.model import DEFAULT_SENDER
from notifier.domain.reconcile import FetchedMessage
from notifier.telemetry import TRACEPARENT, current_traceparent

log = logging.getLogger(__name__)

# The SDK logs request bodies at INFO; message bodies must never reach logs.
_sdk_logger = logging.getLogger("notifier.twilio_sdk")
_sdk_logger.setLevel(logging.WARNING)

# The SDK drops response headers when it raises; this keeps Retry-After for the
# task that made the request (each send runs in its own task, so no cross-talk).
_retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "twilio_retry_after", default=None
)

WHATSAPP = "whatsapp:"
_FORM = "application/x-www-form-urlencoded"
MAX_VALIDITY_SECONDS = 36_000
MAX_RETRY_AFTER_SECONDS = 3600.0  # a larger (or infinite) Retry-After is taken as an hour


class _HeaderKeepingClient(AsyncTwilioHttpClient):
    async def request(self, *args: Any, **kwargs: Any) -> Response:
        # The form body as bytes, encoded as aiohttp would (urlencode, lists as repeated
        # fields) under the Content-Type the SDK sets: given a dict, aiohttp builds a
        # FormData and a MultipartWriter (a uuid4 boundary) per request to send the same
        # bytes, a tenth of the dispatcher's CPU on SQLite. (The SDK passes data by name.)
        data = kwargs.get("data")
        if data and (kwargs.get("headers") or {}).get("Content-Type") == _FORM:
            kwargs["data"] = urlencode(list(data.items()), doseq=True).encode()
        response: Response = await super().request(*args, **kwargs)
        _retry_after.set(_parse_retry_after(response.headers))
        return response

    # The SDK formats every line it logs (the form urlencoded once more, the response's
    # headers) before its logger, at WARNING here, drops it: 2-4 % of the dispatcher's
    # CPU on SQLite.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code: int, response: Response) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)


async def _body_sent(*_: Any) -> None:
    request_written()


# The rate limiter counts a send from when its request goes out (rate_limit.py): when
# its body is handed to the socket, headers and body in one write. aiohttp's "headers
# sent" comes earlier, before the headers are even serialised: they wait in a buffer for
# the body, which a task of its own writes a turn of the event loop later (before
# Python 3.12). With two replicas on PostgreSQL that turn took up to 8 ms on a loaded
# machine (p99 4 ms), more than the half guard, and 81 requests reached the emulator
# in one second at 80/s although every window between those hooks held at most 80.
_WRITES = aiohttp.TraceConfig()
_WRITES.on_request_chunk_sent.append(_body_sent)
_WRITES.freeze()


def _parse_retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date; Twilio sends seconds
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    account_sid: str
    username: str  # the account SID, or an API key SK…
    password: str  # the auth token, or the API key's secret
    base_url: str
    whatsapp_from: str | None
    messaging_service_sid: str | None
    status_callback_url: str | None
    timeout_seconds: float
    # Named sender profiles (issue 16), each complete (see senders.resolve); a message
    # of a profile not listed here goes out from the From fields above.
    profiles: Mapping[str, SenderProfile] = field(default_factory=dict)

    def profile(self, name: str) -> SenderProfile:
        found = self.profiles.get(name)
        if found is not None:
            return found
        return SenderProfile(
            name=DEFAULT_SENDER,
            whatsapp_from=self.whatsapp_from,
            messaging_service_sid=self.messaging_service_sid,
        )

    @property
    def sender(self) -> str:
        """Who the rate limit is for: the messaging service or the sending number."""
        return self.messaging_service_sid or (self.whatsapp_from or "").removeprefix(WHATSAPP)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


class TwilioCopyError(PreconditionFailed):
    """Twilio could not delete or redact its copy of a message: EraseRecipient stops
    before erasing anything here, so a retry finds every SID again."""

    def __init__(self, sid: str, why: str) -> None:
        super().__init__("at_twilio", "TWILIO_ERASE_FAILED", f"Twilio did not erase {sid}: {why}")


class TwilioProvider:
    def __init__(
        self, config: TwilioConfig, trace_configs: list[aiohttp.TraceConfig] | None = None
    ) -> None:
        """``trace_configs``: aiohttp tracing for this client's session only (a span per
        request to Twilio, child of the dispatcher's send span)."""
        self._config = config
        # max_retries=None: no SDK retries
        traces = [*(trace_configs or []), _WRITES]
        self._http = _HeaderKeepingClient(logger=_sdk_logger, trace_configs=traces)
        self._client = Client(
            config.username, config.password, account_sid=config.account_sid, http_client=self._http
        )
        self._client.api.base_url = config.base_url.rstrip("/")

    @property
    def sender(self) -> str:
        return self._config.sender

    def _params(self, msg: OutgoingMessage) -> dict[str, Any]:
        cfg = self._config
        profile = cfg.profile(msg.sender)
        whatsapp = msg.channel == "whatsapp"
        params: dict[str, Any] = {"to": f"{WHATSAPP}{msg.to}" if whatsapp else msg.to}
        if profile.messaging_service_sid:
            params["messaging_service_sid"] = profile.messaging_service_sid
            if msg.validity_seconds is not None:
                params["validity_period"] = max(1, min(MAX_VALIDITY_SECONDS, msg.validity_seconds))
        sender = profile.from_for(msg.channel)
        if sender is not None:
            params["from_"] = sender
        if msg.body is not None:
            params["body"] = msg.body
        if msg.media_urls:
            params["media_url"] = list(msg.media_urls)
        if msg.content_sid is not None:
            params["content_sid"] = msg.content_sid
            if msg.variables:
                params["content_variables"] = json.dumps(msg.variables, sort_keys=True)
        if cfg.status_callback_url:
            # Our id in the callback URL links a callback to its message even when the
            # process died between Twilio's answer and recording the SID. The trace
            # context of this send (when traced) lets each callback's span link back to
            # it: Twilio keeps the URL with the message, so the link needs no lookup and
            # works even for a callback that overtakes the recording of this attempt.
            query = {"message_id": msg.message_id}
            traceparent = current_traceparent()
            if traceparent is not None:
                query[TRACEPARENT] = traceparent
            params["status_callback"] = _with_query(cfg.status_callback_url, **query)
        return params

    async def send(self, msg: OutgoingMessage) -> SendReceipt:
        _retry_after.set(None)
        async with self._errors_mapped():
            created = await self._client.messages.create_async(**self._params(msg))
        return SendReceipt(sid=str(created.sid), status=str(created.status or "queued"))

    async def fetch(self, sid: str) -> FetchedMessage:
        """The message as Twilio shows it now (``GET …/Messages/{Sid}.json``), under the
        same timeout and error mapping as a send; raises ProviderError."""
        _retry_after.set(None)
        async with self._errors_mapped():
            found = await self._client.messages(sid).fetch_async()
        sent = found.date_sent
        return FetchedMessage(
            sid=str(found.sid),
            status=str(found.status),
            error_code=int(found.error_code) if found.error_code is not None else None,
            error_message=found.error_message,
            date_sent_ms=int(sent.timestamp() * 1000) if isinstance(sent, datetime) else None,
        )

    @contextlib.asynccontextmanager
    async def _errors_mapped(self) -> AsyncIterator[None]:
        """Run one request under our own timeout; its failure becomes a ProviderError."""
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                yield
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            raise ProviderError(
                classify(exc.status, code),
                meaning(code) if code in TWILIO_CODES else (exc.msg or f"HTTP {exc.status}"),
                http_status=exc.status,
                code=code,
                retry_after=_retry_after.get(),
            ) from None
        except TimeoutError:
            raise ProviderError(
                ErrorKind.AMBIGUOUS,
                f"no answer from Twilio within {self._config.timeout_seconds:g}s",
            ) from None
        except aiohttp.ClientConnectorError as exc:
            # Never connected, so nothing was sent: safe to retry.
            raise ProviderError(ErrorKind.TRANSIENT, f"cannot reach Twilio: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(
                ErrorKind.AMBIGUOUS, f"connection to Twilio broke: {type(exc).__name__}"
            ) from None

    async def delete_message(self, sid: str) -> bool:
        """DELETE .../Messages/{Sid}.json (EraseRecipient). True once Twilio has no copy
        (404: already gone); False when Twilio refuses because the message is still in
        flight (20009), so the caller redacts it instead."""
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                await self._client.messages(sid).delete_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                return True
            if exc.code == 20009:
                return False
            raise TwilioCopyError(sid, exc.msg or f"HTTP {exc.status}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TwilioCopyError(sid, f"cannot reach Twilio: {type(exc).__name__}") from None
        return True

    async def redact_message(self, sid: str) -> None:
        """POST .../Messages/{Sid}.json with Body="": Twilio blanks the body (its way to
        redact a message it may not delete yet)."""
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                await self._client.messages(sid).update_async(body="")
        except TwilioRestException as exc:
            if exc.status != 404:
                raise TwilioCopyError(sid, exc.msg or f"HTTP {exc.status}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TwilioCopyError(sid, f"cannot reach Twilio: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._http.close()
