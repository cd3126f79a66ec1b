"""The sidecar's Starlette app: Twilio's two webhooks, health and metrics.

Twilio waits about 15 s for an answer and retries some requests, so every handler
answers fast and is safe to repeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, Counter
from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from notifier.domain.clock import Clock, now_ms
from notifier.domain.delivery import meaning
from notifier.domain.errors import StorageUnavailable
from notifier.domain.inbound import InboundMessage, Keywords
from notifier.domain.model import CallbackResult, Status, StatusReport
from notifier.domain.ports import CallbackStore
from notifier.telemetry import TRACEPARENT, link_current_span
from notifier.webhooks.forms import BadRequest, public_url, read_form, signed_by_twilio
from notifier.webhooks.metrics import WebhookMetrics

log = logging.getLogger(__name__)

MAX_ERROR_CODE = 999_999_999
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
WHATSAPP = "whatsapp:"
_EMPTY_200 = PlainTextResponse("")

# Twilio's MessageStatus words we act on; others (e.g. "receiving") are acknowledged.
_REPORTED = {
    s.value: s
    for s in (
        Status.QUEUED,
        Status.ACCEPTED,
        Status.SENDING,
        Status.SENT,
        Status.DELIVERED,
        Status.READ,
        Status.FAILED,
        Status.UNDELIVERED,
    )
}


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    status_url: str  # the public URL Twilio calls, as configured
    inbound_url: str
    status_path: str
    inbound_path: str
    tokens: list[str]
    max_bytes: int
    keywords: Keywords


class _Handlers:
    def __init__(
        self, repo: CallbackStore, config: WebhookConfig, metrics: WebhookMetrics, clock: Clock
    ) -> None:
        self.repo = repo
        self.config = config
        self.metrics = metrics
        self.clock = clock
        # Looked up once per result (created on first use, so /metrics shows only
        # results seen): a label lookup per callback, like building the empty 200
        # every callback gets (a Response is not changed by being sent), was ~1 % of
        # the CPU under load.
        self._results: dict[str, Counter] = {}

    async def _verified_form(self, request: Request, configured_url: str) -> dict[str, str]:
        pairs = await read_form(request, self.config.max_bytes)
        url = public_url(configured_url, request)
        signature = request.headers.get("x-twilio-signature")
        form = dict(pairs)
        repeated = len(form) != len(pairs)
        # A repeated name is checked as Twilio signs it (every value), then refused.
        signed = ImmutableMultiDict(pairs) if repeated else form
        if not signed_by_twilio(url, signed, signature, self.config.tokens):
            raise BadRequest(403, "missing or invalid X-Twilio-Signature")
        if repeated:
            raise BadRequest(400, "repeated parameters")
        return form

    async def status(self, request: Request) -> Response:
        try:
            form = await self._verified_form(request, self.config.status_url)
            report = self._report(form, request.query_params.get("message_id"))
        except BadRequest as exc:
            return self._refused(self.metrics.callbacks, exc)
        # Signed, so the trace context in our StatusCallback URL is the one we put there.
        link_current_span(request.query_params.get(TRACEPARENT))
        if report is None:
            self._counted("ignored")
            return _EMPTY_200
        result, message_id = await self.repo.apply_report(report)
        self._counted(result.value)
        if result is CallbackResult.UNKNOWN:
            log.info("status callback for unknown SID %s", report.twilio_sid)
        else:
            log.debug("callback %s for %s: %s", report.status.value, message_id, result.value)
        return _EMPTY_200

    def _counted(self, result: str) -> None:
        counter = self._results.get(result)
        if counter is None:
            counter = self._results[result] = self.metrics.callbacks.labels(result=result)
        counter.inc()

    def _report(self, form: dict[str, str], message_id: str | None) -> StatusReport | None:
        sid, word = form.get("MessageSid", ""), form.get("MessageStatus", "")
        if not sid or not word:
            raise BadRequest(400, "MessageSid and MessageStatus are required")
        status = _REPORTED.get(word.lower())
        if status is None:
            return None
        raw_code = form.get("ErrorCode") or ""
        # Twilio's codes have five digits; one past int32 failed the insert (a 500) or,
        # stored, every later GetDeliveryStatus of the message (error_code is an int32).
        if raw_code and not (
            raw_code.isascii() and raw_code.isdigit() and int(raw_code) <= MAX_ERROR_CODE
        ):
            raise BadRequest(400, "ErrorCode must be a number of at most nine digits")
        code = int(raw_code) if raw_code and int(raw_code) != 0 else None
        return StatusReport(
            status=status,
            twilio_sid=sid[:34],
            message_id=message_id,
            error_code=code,
            error_message=meaning(code) if code is not None else None,
        )

    async def inbound(self, request: Request) -> Response:
        try:
            form = await self._verified_form(request, self.config.inbound_url)
            message = _inbound(form)
        except BadRequest as exc:
            return self._refused(self.metrics.inbound, exc)
        consent = self.config.keywords.consent(message.body)
        stored = await self.repo.record_inbound(message, consent)
        kind = consent.value if consent is not None else "message"
        self.metrics.inbound.labels(kind=kind if stored else "duplicate").inc()
        return Response(EMPTY_TWIML, media_type="text/xml")

    def _refused(self, counter: Counter, exc: BadRequest) -> Response:
        reason = {403: "forged", 413: "too_large"}.get(exc.status, "malformed")
        counter.labels(reason).inc()
        log.warning("refused a webhook request: %d %s", exc.status, exc.message)
        return PlainTextResponse(exc.message, status_code=exc.status)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        try:
            await self.repo.ping()
        except StorageUnavailable as exc:
            return PlainTextResponse(f"storage unavailable: {exc}", status_code=503)
        return PlainTextResponse("ready")

    async def metrics_text(self, request: Request) -> Response:
        counts, due, oldest = await self.repo.status_counts()
        body = self.metrics.render(counts, due, oldest, self.clock())
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _inbound(form: dict[str, str]) -> InboundMessage:
    sid, sender, to = form.get("MessageSid", ""), form.get("From", ""), form.get("To", "")
    if not sid or not sender or not to:
        raise BadRequest(400, "MessageSid, From and To are required")
    whatsapp = sender.lower().startswith(WHATSAPP)
    count = form.get("NumMedia", "0") or "0"
    if not (count.isascii() and count.isdigit()) or int(count) > 10:
        raise BadRequest(400, "NumMedia must be a number from 0 to 10")
    media = tuple(
        (form.get(f"MediaUrl{i}", ""), form.get(f"MediaContentType{i}", ""))
        for i in range(int(count))
    )
    return InboundMessage(
        message_sid=sid[:34],
        from_addr=sender[len(WHATSAPP) :] if whatsapp else sender,
        to_addr=to,
        channel="whatsapp" if whatsapp else "sms",
        body=form.get("Body", ""),
        media=media,
        profile_name=form.get("ProfileName") or None,
        wa_id=form.get("WaId") or None,
    )


async def _storage_down(request: Request, exc: Exception) -> Response:
    log.warning("webhook could not reach storage: %s", exc)
    return PlainTextResponse("storage unavailable, try again", status_code=503)


def create_webhook_app(
    repo: CallbackStore,
    config: WebhookConfig,
    metrics: WebhookMetrics | None = None,
    clock: Clock = now_ms,
) -> Starlette:
    handlers = _Handlers(repo, config, metrics or WebhookMetrics(), clock)
    routes = [
        Route(config.status_path, handlers.status, methods=["POST"]),
        Route(config.inbound_path, handlers.inbound, methods=["POST"]),
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/readyz", handlers.readyz, methods=["GET"]),
        Route("/metrics", handlers.metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={StorageUnavailable: _storage_down})
