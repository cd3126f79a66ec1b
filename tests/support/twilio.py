"""The official Twilio SDK's async client, pointed at the emulator, as Notifier uses it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from notifier.emulator import DEV_ACCOUNT_SID, DEV_FROM

TO = "whatsapp:+14155550100"


@dataclass
class Twilio:
    """The official SDK's async client, pointed at the emulator."""

    client: Any
    http: Any

    def last_json(self) -> Any:
        """The raw JSON of the last answer, as the SDK received it."""
        return json.loads(self.http._test_only_last_response.text)

    async def send(self, **params: Any) -> Any:
        params.setdefault("to", TO)
        if "messaging_service_sid" not in params:
            params.setdefault("from_", DEV_FROM)
        return await self.client.messages.create_async(**params)

    async def error(self, **params: Any) -> TwilioRestException:
        with pytest.raises(TwilioRestException) as caught:
            await self.send(**params)
        return caught.value


async def twilio_sdk(
    base_url: str, username: str, password: str, account_sid: str = DEV_ACCOUNT_SID
) -> Twilio:
    """Created inside the running loop: the SDK's aiohttp session binds to it."""
    http = AsyncTwilioHttpClient()
    client = Client(username, password, account_sid=account_sid, http_client=http)
    client.api.base_url = base_url
    return Twilio(client, http)
