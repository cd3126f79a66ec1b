"""The rate limiter counts a send from the moment its request is written to Twilio's
socket (dispatch/twilio.py reports it): not earlier, while it still waits in a buffer
for a busy event loop, or sends counted a window apart reach Twilio closer than that.

The emulator runs on an event loop of its own, in a thread, so it stamps each request as
it arrives while the provider's loop is held up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from notifier.dispatch import twilio
from notifier.dispatch.twilio import TwilioConfig, TwilioProvider
from notifier.domain.delivery import OutgoingMessage
from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_FROM
from notifier.emulator.server import EmulatorServer
from tests.support.background import LoopThread

BUSY_SECONDS = 0.2


@pytest.fixture
def emulator_elsewhere() -> Iterator[EmulatorServer]:
    """The emulator serving from another thread's event loop."""
    thread = LoopThread()
    emulator = EmulatorServer()
    thread.run(emulator.__aenter__())
    try:
        yield emulator
    finally:
        thread.run(emulator.__aexit__(None, None, None))
        thread.close()


def _message() -> OutgoingMessage:
    return OutgoingMessage(
        message_id="01JZ0000000000000000000000",
        to="+14155550100",
        channel="whatsapp",
        body="Your table is ready",
        content_sid=None,
        variables={},
        media_urls=(),
    )


async def test_a_send_counts_from_when_its_request_reaches_the_socket(
    emulator_elsewhere: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported, the loop's next turn takes 0.2 s (other sends' answers handled first):
    the request must already be on its way, not written after that turn."""
    loop = asyncio.get_running_loop()
    reported: list[float] = []

    def written() -> None:
        reported.append(time.monotonic())
        loop.call_soon(time.sleep, BUSY_SECONDS)  # the loop busy with other work

    monkeypatch.setattr(twilio, "request_written", written)
    config = TwilioConfig(
        account_sid=DEV_ACCOUNT_SID,
        username=DEV_ACCOUNT_SID,
        password=DEV_AUTH_TOKEN,
        base_url=emulator_elsewhere.url,
        whatsapp_from=DEV_FROM,
        messaging_service_sid=None,
        status_callback_url=None,
        timeout_seconds=10.0,
    )
    provider = TwilioProvider(config)
    try:
        receipt = await provider.send(_message())
    finally:
        await provider.close()

    assert receipt.sid.startswith("SM")
    assert len(reported) == 1, "one report per request"
    (arrived,) = [r.monotonic for r in emulator_elsewhere.state.requests]
    late = arrived - reported[0]
    assert late < BUSY_SECONDS / 2, (
        f"the request reached Twilio {late * 1000:.0f} ms after the limiter counted it: "
        "it was written only after the loop's next turn"
    )
