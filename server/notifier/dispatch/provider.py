"""What the dispatcher sends through: one request per message to the provider (Twilio).

The implementation is ``notifier.dispatch.twilio.TwilioProvider``; tests and benchmarks
may put any object with this shape in its place.
"""

from __future__ import annotations

from typing import Protocol

from notifier.domain.delivery import OutgoingMessage, SendReceipt


class Provider(Protocol):
    @property
    def sender(self) -> str:
        """The sender the rate limit is kept for (WhatsApp number or messaging service)."""

    async def send(self, msg: OutgoingMessage) -> SendReceipt:
        """Hand ``msg`` to the provider; raises ProviderError when it is refused or lost."""
