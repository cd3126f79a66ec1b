"""The use cases behind the API: what happens to a request once it is in domain terms."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import Unsupported, ValidationFailed, Violation
from notifier.domain.model import Accepted, Delivery
from notifier.domain.ports import MessageStore
from notifier.domain.validation import SendRequest, validate_send


def payload_hash(payload: dict[str, object]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(slots=True)
class MessageService:
    store: MessageStore
    idempotency_ttl_ms: int = 24 * 3600 * 1000
    clock: Clock = now_ms
    can_wait_for_acceptance: bool = False

    async def send(self, request: SendRequest, *, caller: str = "") -> Accepted:
        message = validate_send(request, self.clock())
        if message.wait_for_acceptance and not self.can_wait_for_acceptance:
            raise Unsupported("wait_for_acceptance", "this server has no dispatcher to wait for")
        digest = payload_hash(message.payload()) if message.idempotency_key else None
        return await self.store.add_message(
            message, caller=caller, request_hash=digest, key_ttl_ms=self.idempotency_ttl_ms
        )

    async def delivery(
        self, *, message_id: str | None = None, twilio_sid: str | None = None
    ) -> Delivery:
        if not message_id and not twilio_sid:
            raise ValidationFailed([Violation("ref", "set message_id or twilio_sid")])
        return await self.store.get_delivery(
            message_id=message_id or None, twilio_sid=twilio_sid or None
        )
