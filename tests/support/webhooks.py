"""The webhook sidecar's test configuration: its signing tokens (current and old, as
during a rotation), the public URLs Twilio signs, and a message already handed to
Twilio for callbacks to land on."""

from __future__ import annotations

from notifier.domain.model import AttemptRecord, Channel, NewMessage, Status, Transition
from notifier.storage.repository import Repository

TOKEN, OLD_TOKEN = "a" * 32, "b" * 32
STATUS_URL = "https://notifier.example.com/api/v1/whatsapp/status"
INBOUND_URL = "https://notifier.example.com/api/v1/whatsapp/webhook"
SID = "SM" + "1" * 32


async def queued_message(repo: Repository, sid: str | None = SID) -> str:
    """A message the dispatcher has handed to Twilio (or not yet, with sid=None)."""
    accepted = await repo.add_message(
        NewMessage(to="+14155550100", channel=Channel.WHATSAPP, body="hi"),
        caller="",
        request_hash=None,
        key_ttl_ms=1,
    )
    mid = accepted.message.id
    if sid is not None:
        attempt = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
        await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=sid))
    return mid
