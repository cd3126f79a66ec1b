"""The provider's requests are what Twilio accepts: Prism validates them against Twilio's
own OpenAPI description of the Messages API (tests/contract, Apache-2.0, see NOTICE)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from notifier.dispatch.twilio import TwilioConfig, TwilioProvider
from notifier.domain.delivery import ErrorKind, OutgoingMessage, ProviderError
from tests.support.paths import TWILIO_SPEC
from tests.support.prism import Prism, running_prism

MESSAGE_SID = "SM" + "0123456789abcdef" * 2

ACCOUNT = "AC" + "0123456789abcdef" * 2
SID = "HX" + "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    with running_prism(tmp_path_factory.mktemp("prism")) as running:
        yield running


def _provider(prism: Prism, **overrides: Any) -> TwilioProvider:
    config = TwilioConfig(
        account_sid=ACCOUNT,
        username=ACCOUNT,
        password="t" * 32,
        base_url=prism.url,
        whatsapp_from="whatsapp:+14155238886",
        messaging_service_sid=None,
        status_callback_url="https://notifier.example.com/api/v1/whatsapp/status",
        timeout_seconds=10.0,
    )
    return TwilioProvider(dataclasses.replace(config, **overrides))


@pytest.fixture
async def provider(prism: Prism) -> AsyncIterator[TwilioProvider]:
    p = _provider(prism)
    yield p
    await p.close()


def _message(**kw: object) -> OutgoingMessage:
    base: dict[str, object] = {
        "message_id": "01JZ0000000000000000000000",
        "to": "+14155550100",
        "channel": "whatsapp",
        "body": None,
        "content_sid": None,
        "variables": {},
        "media_urls": (),
    }
    base.update(kw)
    return OutgoingMessage(**base)  # type: ignore[arg-type]


async def _validated(prism: Prism, provider: TwilioProvider, msg: OutgoingMessage) -> None:
    mark = prism.mark()
    receipt = await provider.send(msg)
    assert re.fullmatch(r"(SM|MM)[0-9a-fA-F]{32}", receipt.sid)
    await asyncio.sleep(0.2)  # let Prism finish writing its verdict
    assert prism.violations(mark) == []


async def test_text_message_is_a_valid_create(prism: Prism, provider: TwilioProvider) -> None:
    await _validated(prism, provider, _message(body="Your table is ready"))


async def test_template_message_is_a_valid_create(prism: Prism, provider: TwilioProvider) -> None:
    await _validated(prism, provider, _message(content_sid=SID, variables={"1": "Ana"}))


async def test_media_message_is_a_valid_create(prism: Prism, provider: TwilioProvider) -> None:
    await _validated(
        prism, provider, _message(body="Receipt", media_urls=("https://example.com/r.pdf",))
    )


async def test_media_only_message_is_a_valid_create(prism: Prism, provider: TwilioProvider) -> None:
    await _validated(prism, provider, _message(media_urls=("https://example.com/menu.jpg",)))


async def test_an_invalid_request_is_caught(prism: Prism, provider: TwilioProvider) -> None:
    """The check can fail: a bad media URL is reported by Prism and refused."""
    mark = prism.mark()
    with pytest.raises(ProviderError) as info:
        await provider.send(_message(body="x", media_urls=("notaurl",)))
    assert info.value.http_status == 422
    await asyncio.sleep(0.2)
    assert any("MediaUrl" in line for line in prism.violations(mark))


async def test_sms_through_a_messaging_service_with_validity(prism: Prism) -> None:
    p = _provider(prism, whatsapp_from=None, messaging_service_sid="MG" + "0" * 32)
    try:
        await _validated(prism, p, _message(channel="sms", body="hi", validity_seconds=600))
    finally:
        await p.close()


async def test_wrong_credentials_are_a_permanent_error(prism: Prism) -> None:
    p = _provider(prism, password="")
    try:
        with pytest.raises(ProviderError) as info:
            await p.send(_message(body="hi"))
    finally:
        await p.close()
    assert info.value.http_status == 401
    assert info.value.kind is ErrorKind.PERMANENT


async def test_fetch_is_a_valid_request_and_reads_twilio_s_answer(
    prism: Prism, provider: TwilioProvider
) -> None:
    """The reconciler's GET …/Messages/{Sid}.json, and Twilio's answer read back."""
    mark = prism.mark()
    fetched = await provider.fetch(MESSAGE_SID)
    await asyncio.sleep(0.2)
    assert prism.violations(mark) == []
    spec = json.loads(TWILIO_SPEC.read_text())
    assert fetched.status in spec["components"]["schemas"]["message_enum_status"]["enum"]
    assert fetched.date_sent_ms is not None  # parsed from RFC 2822
    assert fetched.date_sent_ms % 1000 == 0


async def test_a_fetch_with_a_bad_sid_is_caught(prism: Prism, provider: TwilioProvider) -> None:
    mark = prism.mark()
    with pytest.raises(ProviderError) as info:
        await provider.fetch("XX123")
    assert info.value.http_status == 422
    await asyncio.sleep(0.2)
    assert any("path parameter sid" in line for line in prism.violations(mark))


async def test_erase_requests_are_valid(prism: Prism, provider: TwilioProvider) -> None:
    """EraseRecipient's two calls (issue 15): DELETE .../Messages/{Sid}.json, and the
    redaction of a message still in flight, POST .../Messages/{Sid}.json with Body=""."""
    mark = prism.mark()
    assert await provider.delete_message(MESSAGE_SID) is True  # 204: gone at Twilio
    await provider.redact_message(MESSAGE_SID)
    await asyncio.sleep(0.2)
    assert prism.violations(mark) == []
    verdicts = prism.log_path.read_text().splitlines()[mark:]
    received = [ln for ln in verdicts if "[HTTP SERVER]" in ln and MESSAGE_SID in ln]
    assert [ln.split("]")[2].split()[0] for ln in received] == ["delete", "post"]
