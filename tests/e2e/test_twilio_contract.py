"""The provider's requests are what Twilio accepts: Prism validates them against Twilio's
own OpenAPI description of the Messages API (tests/contract, Apache-2.0, see NOTICE)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from notifier.dispatch.twilio import TwilioConfig, TwilioProvider
from notifier.domain.delivery import ErrorKind, OutgoingMessage, ProviderError
from tests.support.paths import ROOT, TWILIO_SPEC

PRISM = ROOT / "node_modules" / ".bin" / "prism"
ACCOUNT = "AC" + "0123456789abcdef" * 2
SID = "HX" + "0123456789abcdef" * 2


@dataclass
class Prism:
    url: str
    log_path: Path

    def mark(self) -> int:
        return len(self.log_path.read_text().splitlines())

    def violations(self, since: int) -> list[str]:
        """Prism's verdicts, after line ``since`` of its log, that were not clean passes."""
        lines = self.log_path.read_text().splitlines()[since:]
        return [
            ln.split("[VALIDATOR]")[1].strip()
            for ln in lines
            if "[VALIDATOR]" in ln and "success" not in ln
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CREATE = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


def _spec_for_prism(folder: Path) -> Path:
    """Twilio's description plus one hint for Prism, which cannot read repeated form keys
    as an array (stoplightio/prism#2473): ``MediaUrl`` is declared ``explode: false``.
    For a single media URL, which is what WhatsApp takes, the wire form is the same under
    both styles (``MediaUrl=<url>``), so the request checked is exactly the one sent."""
    spec = json.loads(TWILIO_SPEC.read_text())
    form = spec["paths"][CREATE]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    form["encoding"] = {"MediaUrl": {"style": "form", "explode": False}}
    path = folder / "twilio_messages_for_prism.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    assert PRISM.exists(), "Prism is missing: run `make install` (npm @stoplight/prism-cli)"
    port = _free_port()
    folder = tmp_path_factory.mktemp("prism")
    spec = _spec_for_prism(folder)
    log_path = folder / "prism.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Prism is listening" not in log_path.read_text():
            assert proc.poll() is None, "Prism exited:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "Prism did not start:\n" + log_path.read_text()
            time.sleep(0.1)
        yield Prism(f"http://127.0.0.1:{port}", log_path)
    finally:
        proc.terminate()
        proc.wait(10)


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
    fetched = await provider.fetch("SM" + "0123456789abcdef" * 2)
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
