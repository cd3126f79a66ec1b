"""The Twilio emulator, driven as Notifier drives Twilio: the official SDK over real HTTP.

Each test runs a real ``EmulatorServer`` on an ephemeral port and, where callbacks
matter, a real aiohttp server as the ``StatusCallback`` target that validates every
callback's ``X-Twilio-Signature`` with the ``twilio`` package's ``RequestValidator``.
Answers are checked against Twilio's own OpenAPI description of the Messages resource.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from notifier.emulator import (
    DEV_ACCOUNT_SID,
    DEV_AUTH_TOKEN,
    DEV_FROM,
    DEV_MESSAGING_SERVICE_SID,
)
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.emulator.state import statuses
from tests.support.paths import TWILIO_SPEC
from tests.support.twilio import TO, Twilio, twilio_sdk

API_KEY = "SK" + "fedcba9876543210" * 2
API_SECRET = "s" * 32
SMS_TO = "+14155550101"
SMS_FROM = "+14155238886"
CONTENT_SID = "HX" + "0123456789abcdef" * 2
WHATSAPP_STATUSES = ["sent", "delivered", "read"]

MESSAGES = f"/2010-04-01/Accounts/{DEV_ACCOUNT_SID}/Messages.json"


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The header itself (aiohttp's ``BasicAuth`` helper is deprecated)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- the contract: Twilio's OpenAPI schema, made usable by jsonschema ---------------------


def _to_json_schema(node: Any, schemas: dict[str, Any]) -> Any:
    """OpenAPI 3.0 -> JSON Schema: inline ``$ref``s, ``nullable`` -> a type union."""
    if isinstance(node, list):
        return [_to_json_schema(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        return _to_json_schema(copy.deepcopy(schemas[name]), schemas)
    out = {key: _to_json_schema(value, schemas) for key, value in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _message_validator() -> jsonschema.Draft202012Validator:
    spec = json.loads(TWILIO_SPEC.read_text())
    schemas = spec["components"]["schemas"]
    schema = _to_json_schema(schemas["api.v2010.account.message"], schemas)
    schema["required"] = sorted(schema["properties"])  # every property, filled in
    checker = jsonschema.FormatChecker()
    checker.checks("date-time-rfc-2822", raises=(TypeError, ValueError))(_rfc2822_or_null)
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _rfc2822_or_null(value: object) -> object:
    """A format applies to strings only (JSON Schema): a nullable date may be null, as
    ``date_sent`` is until the message leaves Twilio."""
    return True if value is None else parsedate_to_datetime(value)  # type: ignore[arg-type]


MESSAGE_SCHEMA = _message_validator()


def assert_twilio_error(body: Any, code: int, status: int) -> None:
    """The spec has no error schema: check Twilio's four keys, exactly."""
    assert body == {
        "code": code,
        "message": body["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    assert isinstance(body["message"], str)
    assert body["message"]


# --- a status-callback receiver that checks signatures like a real webhook ----------------


@dataclass
class Callback:
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    valid: bool
    at: float


@dataclass
class CallbackReceiver:
    """A real HTTP server; validates each callback against the public URL it was given."""

    answer_status: int = 200
    received: list[Callback] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/twilio/status") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {key: str(value) for key, value in form.items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        url = str(request.url)
        valid = RequestValidator(DEV_AUTH_TOKEN).validate(url, params, signature)
        self.received.append(Callback(url, params, dict(request.headers), valid, time.monotonic()))
        return web.Response(status=self.answer_status)

    def for_sid(self, sid: str) -> list[Callback]:
        return [c for c in self.received if c.params.get("MessageSid") == sid]

    async def wait_for(self, sid: str, count: int, within: float = 3.0) -> list[Callback]:
        async with asyncio.timeout(within):
            while len(self.for_sid(sid)) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.for_sid(sid)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(api_key=API_KEY, api_secret=API_SECRET) as server:
        yield server


@pytest.fixture
async def twilio(emulator: EmulatorServer) -> AsyncIterator[Twilio]:
    sdk = await twilio_sdk(emulator.url, DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
    yield sdk
    await sdk.http.close()


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    target = CallbackReceiver()
    await target.start()
    yield target
    await target.stop()


@pytest.fixture
async def raw(emulator: EmulatorServer) -> AsyncIterator[aiohttp.ClientSession]:
    """Plain HTTP with the account's credentials, for what the SDK will not send."""
    headers = basic_auth(DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
    async with aiohttp.ClientSession(base_url=emulator.url, headers=headers) as session:
        yield session


async def _post(session: aiohttp.ClientSession, form: Any) -> tuple[int, Any, Any]:
    async with session.post(MESSAGES, data=form) as response:
        return response.status, await response.json(), response.headers


# --- sends --------------------------------------------------------------------------------


async def test_text_send_is_a_twilio_message_resource(
    emulator: EmulatorServer, twilio: Twilio
) -> None:
    message = await twilio.send(body="Your table is ready")
    body = twilio.last_json()
    MESSAGE_SCHEMA.validate(body)
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert body["status"] == "queued"
    assert message.status == "queued"
    assert (body["to"], body["from"], body["body"]) == (TO, DEV_FROM, "Your table is ready")
    assert (body["num_media"], body["num_segments"], body["price"]) == ("0", "1", None)
    assert body["direction"] == "outbound-api"
    assert body["api_version"] == "2010-04-01"
    assert body["uri"] == f"/2010-04-01/Accounts/{DEV_ACCOUNT_SID}/Messages/{message.sid}.json"
    assert body["date_created"].endswith("+0000")
    [accepted] = emulator.state.accepted
    assert accepted.sid == message.sid
    assert emulator.state.accepted_by_body()["Your table is ready"] == [accepted]
    [request] = emulator.state.requests
    assert (request.http_status, request.sid, request.param("Body")) == (
        201,
        message.sid,
        "Your table is ready",
    )


async def test_template_send(emulator: EmulatorServer, twilio: Twilio) -> None:
    variables = json.dumps({"1": "Ada", "2": "7pm"})
    message = await twilio.send(content_sid=CONTENT_SID, content_variables=variables)
    MESSAGE_SCHEMA.validate(twilio.last_json())
    [accepted] = emulator.state.accepted
    assert (accepted.sid, accepted.content_sid) == (message.sid, CONTENT_SID)
    assert json.loads(accepted.content_variables or "") == {"1": "Ada", "2": "7pm"}


async def test_media_send_is_an_mm_message(emulator: EmulatorServer, twilio: Twilio) -> None:
    urls = ["https://example.com/menu.pdf", "https://example.com/map.png"]
    message = await twilio.send(to=SMS_TO, from_=SMS_FROM, body="menu", media_url=urls)
    body = twilio.last_json()
    MESSAGE_SCHEMA.validate(body)
    assert re.fullmatch(r"MM[0-9a-f]{32}", message.sid)
    assert body["num_media"] == "2"
    assert emulator.state.accepted[0].media_urls == urls


async def test_messaging_service_send_is_accepted(twilio: Twilio) -> None:
    message = await twilio.send(messaging_service_sid=DEV_MESSAGING_SERVICE_SID, body="hi")
    body = twilio.last_json()
    MESSAGE_SCHEMA.validate(body)
    assert (message.status, body["from"], body["num_segments"]) == ("accepted", None, "0")
    assert body["messaging_service_sid"] == DEV_MESSAGING_SERVICE_SID


async def test_long_sms_counts_segments(twilio: Twilio) -> None:
    await twilio.send(to=SMS_TO, from_=SMS_FROM, body="a" * 161)
    assert twilio.last_json()["num_segments"] == "2"
    await twilio.send(to=SMS_TO, from_=SMS_FROM, body="é" + "ж" * 70)
    assert twilio.last_json()["num_segments"] == "2"


async def test_fetch_shows_the_status_reached(emulator: EmulatorServer, twilio: Twilio) -> None:
    message = await twilio.send(body="no callback url")
    await emulator.state.wait_for(lambda s: s.accepted[0].status == "read")
    fetched = await twilio.client.messages(message.sid).fetch_async()
    assert fetched.status == "read"
    MESSAGE_SCHEMA.validate(twilio.last_json())


# --- validation and auth ------------------------------------------------------------------

INVALID_FORMS = [
    ({"From": DEV_FROM, "Body": "x"}, 21604),
    ({"To": "whatsapp:+1555", "From": DEV_FROM, "Body": "x"}, 21211),
    ({"To": "0044 20 7946", "From": SMS_FROM, "Body": "x"}, 21211),
    ({"To": TO, "Body": "x"}, 21603),
    ({"To": TO, "From": DEV_FROM}, 21602),
    ({"To": TO, "From": DEV_FROM, "Body": "x" * 1601}, 21617),
    ({"To": SMS_TO, "From": DEV_FROM, "Body": "x"}, 21910),
    ({"To": TO, "From": SMS_FROM, "Body": "x"}, 21910),
    ({"To": TO, "From": DEV_FROM, "ContentSid": "HX123"}, 21655),
    ({"To": TO, "From": DEV_FROM, "ContentSid": CONTENT_SID, "ContentVariables": "{"}, 21656),
    ({"To": TO, "From": DEV_FROM, "Body": "x", "ValidityPeriod": "0"}, 21624),
    ({"To": TO, "From": DEV_FROM, "Body": "x", "StatusCallback": "ftp://x"}, 21609),
    ([("To", SMS_TO), ("From", SMS_FROM)] + [("MediaUrl", "https://e.com/a")] * 11, 21623),
]


@pytest.mark.parametrize(("form", "code"), INVALID_FORMS)
async def test_invalid_requests_get_twilio_errors(
    emulator: EmulatorServer, raw: aiohttp.ClientSession, form: Any, code: int
) -> None:
    status, body, _ = await _post(raw, form)
    assert status == 400
    assert_twilio_error(body, code, 400)
    assert emulator.state.accepted == []
    assert emulator.state.requests[0].error_code == code


async def test_sdk_raises_the_twilio_error(twilio: Twilio) -> None:
    error = await twilio.error(to="whatsapp:+1555", body="x")
    assert (error.status, error.code) == (400, 21211)
    assert_twilio_error(twilio.last_json(), 21211, 400)


async def test_bad_auth_is_401_20003(emulator: EmulatorServer) -> None:
    for username, password in [(DEV_ACCOUNT_SID, "f" * 32), (API_KEY, "wrong")]:
        sdk = await twilio_sdk(emulator.url, username, password)
        try:
            error = await sdk.error(body="x")
            assert (error.status, error.code) == (401, 20003)
            assert_twilio_error(sdk.last_json(), 20003, 401)
        finally:
            await sdk.http.close()
    async with aiohttp.ClientSession(base_url=emulator.url) as session:
        status, body, headers = await _post(session, {"To": TO, "From": DEV_FROM, "Body": "x"})
    assert (status, body["code"], headers["WWW-Authenticate"]) == (
        401,
        20003,
        'Basic realm="Twilio API"',
    )
    assert [(r.http_status, r.error_code) for r in emulator.state.requests] == [(401, 20003)] * 3
    assert emulator.state.accepted == []


async def test_other_account_in_the_path_is_refused(emulator: EmulatorServer) -> None:
    other = "AC" + "f" * 32
    headers = basic_auth(DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
    async with aiohttp.ClientSession(base_url=emulator.url, headers=headers) as session:
        path = f"/2010-04-01/Accounts/{other}/Messages.json"
        async with session.post(path, data={"To": TO, "From": DEV_FROM, "Body": "x"}) as resp:
            assert resp.status == 401
            assert_twilio_error(await resp.json(), 20003, 401)


async def test_api_key_auth(emulator: EmulatorServer) -> None:
    sdk = await twilio_sdk(emulator.url, API_KEY, API_SECRET)
    try:
        message = await sdk.send(body="with an API key")
    finally:
        await sdk.http.close()
    assert emulator.state.accepted[0].sid == message.sid


# --- status callbacks ---------------------------------------------------------------------


async def test_whatsapp_callbacks_are_signed_sent_delivered_read(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    url = receiver.url() + "?tenant=acme&n=1"
    message = await twilio.send(body="hello", status_callback=url)
    got = await receiver.wait_for(message.sid, 3)
    assert [c.params["MessageStatus"] for c in got] == WHATSAPP_STATUSES
    assert all(c.valid for c in got)
    for callback in got:
        params = callback.params
        assert callback.url == url
        assert params["SmsStatus"] == params["MessageStatus"]
        assert (params["MessageSid"], params["SmsSid"]) == (message.sid, message.sid)
        assert (params["AccountSid"], params["ApiVersion"]) == (DEV_ACCOUNT_SID, "2010-04-01")
        assert (params["From"], params["To"]) == (DEV_FROM, TO)
        assert params["ChannelPrefix"] == "whatsapp"
        assert params["ChannelToAddress"] == "+14155550100"
        assert params["ChannelInstallSid"].startswith("XE")
        assert "ErrorCode" not in params
    assert [c.params.get("EventType") for c in got] == [None, None, "READ"]
    assert emulator.state.message(message.sid).status == "read"  # type: ignore[union-attr]
    records = emulator.state.callbacks_for(message.sid)
    assert statuses(records) == WHATSAPP_STATUSES
    assert all(r.ok for r in records)


async def test_sms_callbacks_are_sent_then_delivered(
    twilio: Twilio, receiver: CallbackReceiver
) -> None:
    message = await twilio.send(
        to=SMS_TO, from_=SMS_FROM, body="hi", status_callback=receiver.url()
    )
    got = await receiver.wait_for(message.sid, 2)
    await asyncio.sleep(0.1)  # nothing more comes
    got = receiver.for_sid(message.sid)
    assert [c.params["MessageStatus"] for c in got] == ["sent", "delivered"]
    assert all(c.valid for c in got)
    assert not any(key.startswith("Channel") for c in got for key in c.params)


async def test_a_tampered_callback_would_not_validate(
    twilio: Twilio, receiver: CallbackReceiver
) -> None:
    """The receiver really checks: the same signature fails for other params or URL."""
    message = await twilio.send(body="x", status_callback=receiver.url())
    [first, *_] = await receiver.wait_for(message.sid, 1)
    validator = RequestValidator(DEV_AUTH_TOKEN)
    signature = first.headers["X-Twilio-Signature"]
    assert validator.validate(first.url, first.params, signature)
    assert not validator.validate(first.url, first.params | {"MessageStatus": "read"}, signature)
    assert not validator.validate(first.url + "?x=1", first.params, signature)


async def test_callback_target_down_is_counted_and_retried(
    emulator: EmulatorServer, twilio: Twilio
) -> None:
    emulator.faults = Faults(callback_retries=2, callback_retry_delay_seconds=0.01)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/status"
    message = await twilio.send(to=SMS_TO, from_=SMS_FROM, body="x", status_callback=dead)
    await emulator.state.wait_for(lambda s: s.callback_failures >= 6)
    attempts = emulator.state.callbacks_for(message.sid)
    assert sorted((r.status, r.attempt) for r in attempts) == [
        ("delivered", 1),
        ("delivered", 2),
        ("delivered", 3),
        ("sent", 1),
        ("sent", 2),
        ("sent", 3),
    ]
    assert all(r.error and r.http_status is None for r in attempts)
    await twilio.send(body="still answering")  # nothing broke


async def test_non_2xx_callback_answer_is_a_failure(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    receiver.answer_status = 500
    emulator.faults = Faults(callback_retries=1, callback_retry_delay_seconds=0.01)
    message = await twilio.send(to=SMS_TO, from_=SMS_FROM, body="x", status_callback=receiver.url())
    got = await receiver.wait_for(message.sid, 4)
    assert sorted(c.params["MessageStatus"] for c in got) == ["delivered"] * 2 + ["sent"] * 2
    await emulator.state.wait_for(lambda s: s.callback_failures == 4)
    assert {r.http_status for r in emulator.state.callbacks} == {500}


# --- faults on the create call ------------------------------------------------------------


async def _outcomes(twilio: Twilio, count: int) -> list[int]:
    """HTTP status of ``count`` sequential sends (201 or the error's status code)."""
    codes: list[int] = []
    for n in range(count):
        try:
            await twilio.send(body=f"m{n}")
            codes.append(201)
        except TwilioRestException as error:
            codes.append(int(error.code))
    return codes


async def test_error_rates_are_seeded(emulator: EmulatorServer, twilio: Twilio) -> None:
    faults = Faults(seed=7, error_rates={20500: 0.3, 20503: 0.2, 21610: 0.1})
    emulator.faults = faults
    first = await _outcomes(twilio, 30)
    assert set(first) == {201, 20500, 20503, 21610}
    assert len(emulator.state.accepted) == first.count(201)  # a 20500 here took nothing
    emulator.faults = faults  # the same seed from the start: the same answers
    assert await _outcomes(twilio, 30) == first
    emulator.faults = faults.model_copy(update={"seed": 8})
    assert await _outcomes(twilio, 30) != first


async def test_error_codes_map_to_twilio_http_statuses(
    emulator: EmulatorServer, twilio: Twilio
) -> None:
    for code, status in [(20500, 500), (20503, 503), (30500, 500), (20003, 401), (63016, 400)]:
        emulator.faults = Faults(error_rates={code: 1.0})
        error = await twilio.error(body="x")
        assert (error.status, error.code) == (status, code)
        assert_twilio_error(twilio.last_json(), code, status)
    assert emulator.state.accepted == []


async def test_rate_limit_answers_429_with_retry_after(
    emulator: EmulatorServer, twilio: Twilio, raw: aiohttp.ClientSession
) -> None:
    emulator.faults = Faults(rate_limit_fraction=1.0, retry_after_seconds=0.5)
    status, body, headers = await _post(raw, {"To": TO, "From": DEV_FROM, "Body": "x"})
    assert (status, headers["Retry-After"]) == (429, "0.5")
    assert_twilio_error(body, 20429, 429)
    emulator.faults = Faults(rate_limit_fraction=1.0, retry_after_seconds=2)
    error = await twilio.error(body="x")
    assert (error.status, error.code) == (429, 20429)
    assert twilio.http._test_only_last_response.headers["Retry-After"] == "2"
    assert emulator.state.accepted == []


async def test_rate_limit_burst_then_normal(emulator: EmulatorServer, twilio: Twilio) -> None:
    emulator.faults = Faults(rate_limit_burst=3)
    assert await _outcomes(twilio, 5) == [20429, 20429, 20429, 201, 201]
    assert [r.http_status for r in emulator.state.requests] == [429, 429, 429, 201, 201]


async def test_latency_delays_the_answer(emulator: EmulatorServer, twilio: Twilio) -> None:
    emulator.faults = Faults(latency_seconds=0.2)
    started = time.monotonic()
    await twilio.send(body="slow")
    assert 0.2 <= time.monotonic() - started < 1.5
    emulator.faults = Faults(latency_seconds=0.05, latency_jitter_seconds=0.1)
    started = time.monotonic()
    await twilio.send(body="jitter")
    assert 0.05 <= time.monotonic() - started < 1.0


async def test_hang_makes_the_client_time_out(
    emulator: EmulatorServer, twilio: Twilio, raw: aiohttp.ClientSession
) -> None:
    emulator.faults = Faults(hang_fraction=1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(twilio.send(body="sdk"), 0.5)
    with pytest.raises(TimeoutError):
        async with raw.post(
            MESSAGES,
            data={"To": TO, "From": DEV_FROM, "Body": "aiohttp"},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ):
            pass
    requests = emulator.state.requests
    assert [(r.hung, r.http_status) for r in requests] == [(True, None), (True, None)]
    assert emulator.state.accepted == []
    started = time.monotonic()
    await emulator.stop()  # held requests do not hold up the shutdown
    assert time.monotonic() - started < 2


async def test_hang_with_record_on_error_takes_the_message(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(hang_fraction=1.0, record_on_error=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(twilio.send(body="maybe", status_callback=receiver.url()), 0.5)
    [message] = emulator.state.accepted_by_body()["maybe"]
    assert emulator.state.requests[0].sid == message.sid
    got = await receiver.wait_for(message.sid, 3)
    assert all(c.valid for c in got)


async def test_20500_with_record_on_error_is_ambiguous(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(error_rates={20500: 1.0}, record_on_error=True)
    error = await twilio.error(body="taken anyway", status_callback=receiver.url())
    assert (error.status, error.code) == (500, 20500)
    [message] = emulator.state.accepted
    assert message.body == "taken anyway"
    got = await receiver.wait_for(message.sid, 3)
    assert [c.params["MessageStatus"] for c in got] == WHATSAPP_STATUSES
    emulator.faults = Faults(error_rates={20503: 1.0}, record_on_error=True)
    await twilio.error(body="never taken")
    assert "never taken" not in emulator.state.accepted_by_body()


async def test_to_errors_are_per_recipient(emulator: EmulatorServer, twilio: Twilio) -> None:
    emulator.faults = Faults(to_errors={"+14155550199": 21610})
    error = await twilio.error(to="whatsapp:+14155550199", body="x")
    assert (error.status, error.code) == (400, 21610)
    await twilio.send(body="others are fine")
    assert [m.body for m in emulator.state.accepted] == ["others are fine"]


# --- faults on delivery and callbacks -----------------------------------------------------


async def test_undelivered_outcome_comes_through_callbacks(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(outcomes={"undelivered": (1.0, 30003)})
    message = await twilio.send(body="x", status_callback=receiver.url())
    got = await receiver.wait_for(message.sid, 2)
    assert [c.params["MessageStatus"] for c in got] == ["sent", "undelivered"]
    assert got[1].params["ErrorCode"] == "30003"
    assert got[1].params["ErrorMessage"]
    assert all(c.valid for c in got)
    fetched = await twilio.client.messages(message.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30003)


async def test_failed_outcome_per_recipient(
    twilio: Twilio, receiver: CallbackReceiver, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(to_outcomes={"+14155550123": ("failed", 63016)})
    failing = await twilio.send(
        to="whatsapp:+14155550123", body="x", status_callback=receiver.url()
    )
    fine = await twilio.send(body="y", status_callback=receiver.url())
    [failed] = await receiver.wait_for(failing.sid, 1)
    await receiver.wait_for(fine.sid, 3)
    assert (failed.params["MessageStatus"], failed.params["ErrorCode"]) == ("failed", "63016")
    assert len(receiver.for_sid(failing.sid)) == 1


async def test_outcome_fractions_are_seeded(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(seed=3, outcomes={"failed": (0.5, 63016)})
    sids = [
        (
            await twilio.send(
                to=SMS_TO, from_=SMS_FROM, body=str(n), status_callback=receiver.url()
            )
        ).sid
        for n in range(8)
    ]
    await emulator.state.wait_for(
        lambda s: all(s.message(sid).status in ("failed", "delivered") for sid in sids)  # type: ignore[union-attr]
    )
    finals = {emulator.state.message(sid).status for sid in sids}  # type: ignore[union-attr]
    assert finals == {"failed", "delivered"}


async def test_dropped_callbacks_never_arrive(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(drop_callback_fraction=1.0)
    message = await twilio.send(body="x", status_callback=receiver.url())
    await emulator.state.wait_for(lambda s: len(s.callbacks) == 3)
    await asyncio.sleep(0.05)
    assert receiver.received == []
    assert all(r.dropped for r in emulator.state.callbacks)
    assert emulator.state.callbacks_for(message.sid) == []
    assert emulator.state.message(message.sid).status == "read"  # type: ignore[union-attr]


async def test_duplicated_callbacks_arrive_twice(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(duplicate_callback_fraction=1.0)
    message = await twilio.send(body="x", status_callback=receiver.url())
    got = await receiver.wait_for(message.sid, 6)
    assert sorted(c.params["MessageStatus"] for c in got) == sorted(WHATSAPP_STATUSES * 2)
    assert all(c.valid for c in got)
    tokens: dict[str, set[str]] = {}
    for callback in got:
        token = callback.headers["I-Twilio-Idempotency-Token"]
        tokens.setdefault(callback.params["MessageStatus"], set()).add(token)
    assert all(len(same) == 1 for same in tokens.values())  # a duplicate is the same event
    assert sum(r.duplicate for r in emulator.state.callbacks) == 3


async def test_reordered_callbacks_arrive_backwards(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(
        reorder_callbacks=True,
        sent_after_seconds=0.0,
        delivered_after_seconds=0.1,
        read_after_seconds=0.2,
    )
    message = await twilio.send(body="x", status_callback=receiver.url())
    got = await receiver.wait_for(message.sid, 3)
    assert [c.params["MessageStatus"] for c in got] == ["read", "delivered", "sent"]
    assert [c.params.get("EventType") for c in got] == ["READ", None, None]
    assert emulator.state.message(message.sid).status == "read"  # type: ignore[union-attr]


async def test_callback_delays_are_configurable(
    emulator: EmulatorServer, twilio: Twilio, receiver: CallbackReceiver
) -> None:
    emulator.faults = Faults(
        sent_after_seconds=0.1, delivered_after_seconds=0.2, read_after_seconds=0.3
    )
    message = await twilio.send(body="x", status_callback=receiver.url())
    accepted_at = emulator.state.accepted[0].monotonic
    got = await receiver.wait_for(message.sid, 3)
    delays = [c.at - accepted_at for c in got]
    assert [c.params["MessageStatus"] for c in got] == WHATSAPP_STATUSES
    for delay, planned in zip(delays, [0.1, 0.2, 0.3], strict=True):
        assert planned - 0.01 <= delay < planned + 0.5


# --- admin API ----------------------------------------------------------------------------


async def test_admin_faults_messages_and_reset(
    emulator: EmulatorServer, twilio: Twilio, raw: aiohttp.ClientSession
) -> None:
    async with raw.get("/_emulator/faults") as resp:
        assert Faults.model_validate(await resp.json()) == Faults()
    wanted = {"error_rates": {"20500": 1.0}, "outcomes": {"failed": [0.5, 63016]}}
    async with raw.post("/_emulator/faults", json=wanted) as resp:
        assert resp.status == 200
    assert emulator.faults.error_rates == {20500: 1.0}
    assert emulator.faults.outcomes == {"failed": (0.5, 63016)}
    async with raw.post("/_emulator/faults", json={"hang_fraction": 2}) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"]
    emulator.faults = Faults()
    message = await twilio.send(body="listed")
    async with raw.get("/_emulator/messages") as resp:
        [listed] = (await resp.json())["messages"]
    assert (listed["sid"], listed["body"], listed["media_urls"]) == (message.sid, "listed", [])
    emulator.faults = Faults(latency_seconds=1)
    async with raw.post("/_emulator/reset") as resp:
        assert resp.status == 200
    assert (emulator.state.accepted, emulator.state.requests, emulator.faults) == ([], [], Faults())


async def test_unknown_route_is_a_twilio_404(raw: aiohttp.ClientSession) -> None:
    async with raw.get("/2010-04-01/Accounts/nope/Calls.json") as resp:
        assert resp.status == 404
        assert_twilio_error(await resp.json(), 20404, 404)


# --- the command ----------------------------------------------------------------------------
