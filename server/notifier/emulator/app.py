"""The emulator's HTTP API: Twilio's Messages create call, plus ``/_emulator`` admin routes.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` checks HTTP Basic auth and the
form the way Twilio does and answers Twilio's JSON (the message resource, or
``{"code", "message", "more_info", "status"}``), so the official SDK cannot tell the
difference. ``GET …/Messages/{Sid}.json`` fetches a message as it stands (status, error,
``date_sent`` once it left), which Notifier's reconciler does when callbacks are lost;
each fetch is recorded (``state.fetches_of``). Admin routes (no auth: a local development tool):

- ``GET /_emulator/faults`` and ``POST /_emulator/faults`` (JSON ``Faults``; replaces all)
- ``POST /_emulator/reset`` (forget traffic, pending callbacks and faults)
- ``GET /_emulator/messages`` (accepted messages, oldest first)

The Content API (``GET /v1/Content/{Sid}``, a few templates) is in ``content.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import phonenumbers
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.emulator import DEV_FROM, whatsapp
from notifier.emulator.callbacks import CallbackSender, plan_callbacks
from notifier.emulator.content import ContentApi, content_routes
from notifier.emulator.erase import erase_routes
from notifier.emulator.faults import (
    RATE_LIMITED,
    FaultInjector,
    Faults,
    error_message,
    http_status_for,
)
from notifier.emulator.state import (
    WHATSAPP,
    AcceptedMessage,
    EmulatorState,
    ReceivedRequest,
    bare_number,
)

Form = ImmutableMultiDict[str, str]

MAX_BODY = 1600
MAX_MEDIA = 10
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
MESSAGE_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json"

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")


class TwilioError(Exception):
    """A refusal in Twilio's terms; validation raises it, the handler renders it."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def twilio_error(code: int, message: str | None = None, *, retry_after: float = 1) -> JSONResponse:
    """``{"code", "message", "more_info", "status"}`` with the status Twilio uses for it.

    A 401 says how to authenticate and a 429 when to come back, as Twilio's do.
    """
    status = http_status_for(code)
    body = {
        "code": code,
        "message": message or error_message(code),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    if status == 429:
        headers["Retry-After"] = format_seconds(retry_after)
    return JSONResponse(body, status_code=status, headers=headers)


def format_seconds(seconds: float) -> str:
    """``Retry-After`` text: ``1`` or ``0.5`` (no trailing zeros)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who may call: the account's SID and auth token, or an API key and its secret."""

    account_sid: str
    auth_token: str
    api_key: str | None = None
    api_secret: str | None = None

    def allows(self, authorization: str | None, path_account: str) -> bool:
        """HTTP Basic for this account; the path must name the same account."""
        pair = _basic_auth(authorization)
        if pair is None or path_account != self.account_sid:
            return False
        user, password = pair
        if user == self.account_sid:
            return hmac.compare_digest(password, self.auth_token)
        if self.api_key is not None and self.api_secret is not None and user == self.api_key:
            return hmac.compare_digest(password, self.api_secret)
        return False


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


# --- validation, in Twilio's order: recipient, sender, content, options -------------------


def _value(form: Form, name: str) -> str | None:
    """A parameter, with an empty value treated as absent (as Twilio does)."""
    return form.get(name) or None


def validate(form: Form) -> None:
    """Raise ``TwilioError`` for the first problem Twilio would report."""
    _check_to(form)
    _check_sender(form)
    _check_content(form)
    _check_options(form)


def _check_to(form: Form) -> None:
    to = _value(form, "To")
    if to is None:
        raise TwilioError(21604)
    if not _possible_number(bare_number(to)):
        raise TwilioError(21211, f"The 'To' number {to} is not a valid phone number.")


def _possible_number(number: str) -> bool:
    """E.164 with a length that fits its country (Twilio looks numbers up; close enough)."""
    if not _E164.match(number):
        return False
    try:
        return bool(phonenumbers.is_possible_number(phonenumbers.parse(number, None)))
    except phonenumbers.NumberParseException:
        return False


def _check_sender(form: Form) -> None:
    sender, service = _value(form, "From"), _value(form, "MessagingServiceSid")
    if sender is None and service is None:
        raise TwilioError(21603)
    if service is not None and not _SERVICE_SID.match(service):
        raise TwilioError(21701, f"The Messaging Service Sid {service} is invalid.")
    if sender is None:
        return
    if not _valid_sender(sender):
        raise TwilioError(
            21212,
            f"The 'From' number {sender} is not a valid phone number, shortcode, "
            "or alphanumeric sender ID.",
        )
    if sender.startswith(WHATSAPP) != str(form.get("To")).startswith(WHATSAPP):
        raise TwilioError(
            21910, "Invalid 'From' and 'To' pair. 'From' and 'To' should be of the same channel"
        )


def _valid_sender(sender: str) -> bool:
    if sender.startswith(WHATSAPP):
        return bool(_E164.match(bare_number(sender)))
    return any(p.match(sender) for p in (_E164, _SHORT_CODE, _ALPHANUMERIC_SENDER))


def _check_content(form: Form) -> None:
    body, media = _value(form, "Body"), [url for url in form.getlist("MediaUrl") if url]
    content_sid = _value(form, "ContentSid")
    if body is None and not media and content_sid is None:
        raise TwilioError(21602)
    if body is not None and len(body) > MAX_BODY:
        raise TwilioError(21617)
    if len(media) > MAX_MEDIA:
        raise TwilioError(21623, "Number of media files exceeds allowed limit")
    if any(urlsplit(url).scheme not in ("http", "https") for url in media):
        raise TwilioError(21620, "Invalid media URL(s)")
    _check_template(form, content_sid)


def _check_template(form: Form, content_sid: str | None) -> None:
    variables = _value(form, "ContentVariables")
    if content_sid is None:
        if variables is not None:
            raise TwilioError(21654, "ContentSid Required")
        return
    if not _CONTENT_SID.match(content_sid):
        raise TwilioError(21655, "The ContentSid is Invalid")
    if variables is not None and not _json_object(variables):
        raise TwilioError(21656, "The ContentVariables Parameter is invalid")


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _check_options(form: Form) -> None:
    callback = _value(form, "StatusCallback")
    if callback is not None:
        parts = urlsplit(callback)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TwilioError(21609, "Invalid 'StatusCallback'")
    validity = _value(form, "ValidityPeriod")
    if validity is not None and not (validity.isdigit() and 1 <= int(validity) <= 36000):
        raise TwilioError(21624, "Invalid validity period value")


# --- the accepted message ----------------------------------------------------------------


def num_segments(body: str, whatsapp: bool) -> str:
    """Segments as Twilio counts them: GSM-7 160/153 per part, else UCS-2 70/67."""
    if whatsapp or not body:
        return "1"
    if set(body) <= _GSM7 | _GSM7_EXTENDED:
        units = len(body) + sum(char in _GSM7_EXTENDED for char in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return str(1 if units <= single else math.ceil(units / part))


def build_message(form: Form, account_sid: str, monotonic: float) -> AcceptedMessage:
    """The message a valid form describes, as Twilio would store it on acceptance."""
    to = str(form.get("To"))
    sender, service = _value(form, "From"), _value(form, "MessagingServiceSid")
    media = [url for url in form.getlist("MediaUrl") if url]
    body = _value(form, "Body") or ""
    validity = _value(form, "ValidityPeriod")
    return AcceptedMessage(
        sid=("MM" if media else "SM") + uuid.uuid4().hex,
        account_sid=account_sid,
        to=to,
        from_=sender,
        sender=sender or (DEV_FROM if to.startswith(WHATSAPP) else bare_number(DEV_FROM)),
        messaging_service_sid=service,
        body=body,
        media_urls=media,
        content_sid=_value(form, "ContentSid"),
        content_variables=_value(form, "ContentVariables"),
        status_callback=_value(form, "StatusCallback"),
        validity_period=int(validity) if validity else None,
        status="accepted" if service else "queued",
        num_segments="0" if sender is None else num_segments(body, to.startswith(WHATSAPP)),
        date_created=datetime.now(UTC).replace(microsecond=0),
        monotonic=monotonic,
        params=list(form.multi_items()),
    )


# --- the emulator instance ----------------------------------------------------------------


class Emulator:
    """One emulator: credentials, faults, what it received, and its callback sender."""

    def __init__(self, credentials: Credentials, faults: Faults | None = None) -> None:
        self.credentials = credentials
        self.state = EmulatorState()
        self.injector = FaultInjector(faults)
        self.callbacks = CallbackSender(credentials.auth_token, self.state)
        self.content = ContentApi(credentials.account_sid)
        self._stopping = asyncio.Event()

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.injector.set(faults)

    def accept(self, form: Form, account_sid: str, monotonic: float) -> AcceptedMessage:
        """Record a message and start its lifecycle (status changes and callbacks)."""
        message = build_message(form, account_sid, monotonic)
        self.state.record_accepted(message)
        plan = plan_callbacks(message, self.faults, self.injector.next_message_rng())
        self.callbacks.schedule(message, plan, self.faults)
        return message

    async def reset(self) -> None:
        """Forget traffic and pending callbacks; back to no faults."""
        await self.callbacks.cancel_pending()
        self.state.clear()
        self.content.clear()
        self.injector.set(Faults())

    def begin_shutdown(self) -> None:
        """Wake requests held by latency or hang faults so the server can stop."""
        self._stopping.set()

    async def close(self) -> None:
        self.begin_shutdown()
        await self.callbacks.close()

    async def pause(self, seconds: float) -> None:
        """Sleep for an injected latency, cut short when the server stops."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def hang(self, request: Request) -> None:
        """Hold a request until its client gives up, the server stops, or the cap passes."""
        waiters = [
            asyncio.create_task(_disconnected(request)),
            asyncio.create_task(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self.faults.hang_cap_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    """Return once the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- HTTP handlers ------------------------------------------------------------------------


class _Handlers:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def authorized(self, request: Request) -> bool:
        account = request.path_params["AccountSid"]
        return self.emulator.credentials.allows(request.headers.get("Authorization"), account)

    def content_authorized(self, request: Request) -> bool:
        """The Content API's paths name no account: the credentials' own."""
        credentials = self.emulator.credentials
        return credentials.allows(request.headers.get("Authorization"), credentials.account_sid)

    async def create_message(self, request: Request) -> Response:
        arrived = (time.monotonic(), datetime.now(UTC))  # before the body: rate tests read it
        body = (await request.body()).decode("utf-8", errors="replace")
        form = Form(parse_qsl(body, keep_blank_values=True))
        record = self.emulator.state.record_request(
            request.path_params["AccountSid"], list(form.multi_items()), arrived
        )
        if not self.authorized(request):
            return self._fail(record, 20003)
        return await self._answer(request, form, record)

    async def _answer(self, request: Request, form: Form, record: ReceivedRequest) -> Response:
        """Twilio's own behaviour, with the faults drawn for this request around it."""
        emulator = self.emulator
        fate = emulator.injector.request_fate(bare_number(form.get("To") or ""))
        await emulator.pause(fate.delay_seconds)
        try:
            if fate.rate_limited:
                raise TwilioError(RATE_LIMITED)
            validate(form)
            refused = whatsapp.refusal(
                form.get("To") or "",
                emulator.faults.whatsapp_outcomes,
                emulator.faults.whatsapp_late_outcomes,
            )
            if refused is not None:
                raise TwilioError(refused)
        except TwilioError as error:
            return self._fail(record, error.code, error.message)
        message = None
        if fate.takes_message:
            message = emulator.accept(form, record.account_sid, record.monotonic)
            record.sid = message.sid
        if fate.hang:
            record.hung = True
            await emulator.hang(request)
            return twilio_error(20503)  # seen only if the cap passes while the client waits
        if fate.error_code is not None:
            return self._fail(record, fate.error_code)
        assert message is not None
        record.http_status = 201
        return JSONResponse(message.to_resource(), status_code=201)

    def _fail(self, record: ReceivedRequest, code: int, message: str | None = None) -> Response:
        record.http_status, record.error_code = http_status_for(code), code
        return twilio_error(code, message, retry_after=self.emulator.faults.retry_after_seconds)

    async def fetch_message(self, request: Request) -> Response:
        """The message as it stands now (status, error, dates), as Twilio's fetch; the
        answer's HTTP status goes on the fetch's record."""
        record = self.emulator.state.record_fetch(request.path_params["MessageSid"])
        response = self._fetched(request, record.sid)
        record.http_status = response.status_code
        return response

    def _fetched(self, request: Request, sid: str) -> Response:
        faults = self.emulator.faults
        if not self.authorized(request):
            return twilio_error(20003)
        if faults.fetch_error is not None:
            return twilio_error(faults.fetch_error)
        message = self.emulator.state.message(sid)
        if message is None or message.account_sid != request.path_params["AccountSid"]:
            return twilio_error(20404, f"The requested resource {request.url.path} was not found")
        code = faults.to_fetch_errors.get(bare_number(message.to))
        if code is not None:
            return twilio_error(code, retry_after=faults.retry_after_seconds)
        return JSONResponse(message.to_resource())

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.emulator.faults.model_dump(mode="json"))

    async def set_faults(self, request: Request) -> Response:
        try:
            self.emulator.faults = Faults.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"errors": json.loads(exc.json(include_url=False))}, 400)
        return await self.get_faults(request)

    async def reset(self, request: Request) -> Response:
        await self.emulator.reset()
        return JSONResponse({"reset": True})

    async def messages(self, request: Request) -> Response:
        return JSONResponse({"messages": [m.to_json() for m in self.emulator.state.accepted]})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return twilio_error(20404, f"The requested resource {request.url.path} was not found")
    return JSONResponse({"status": status, "message": str(exc)}, status_code=status)


def create_app(emulator: Emulator) -> Starlette:
    """The ASGI app for ``emulator``; its lifespan closes the callback sender."""
    handlers = _Handlers(emulator)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await emulator.close()

    routes = [
        Route(MESSAGES_PATH, handlers.create_message, methods=["POST"]),
        Route(MESSAGE_PATH, handlers.fetch_message, methods=["GET"]),
        *erase_routes(MESSAGE_PATH, emulator.state, handlers.authorized, twilio_error),
        Route("/_emulator/faults", handlers.get_faults, methods=["GET"]),
        Route("/_emulator/faults", handlers.set_faults, methods=["POST"]),
        Route("/_emulator/reset", handlers.reset, methods=["POST"]),
        Route("/_emulator/messages", handlers.messages, methods=["GET"]),
        *content_routes(emulator.content, handlers.content_authorized),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
