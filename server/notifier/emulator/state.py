"""The emulator's memory: every create request, every accepted message, every callback.

Tests read it to check what Notifier really did on the wire (how many sends, in what
order, which ones were duplicates), so it records arrivals as they happen, before any
fault decides the answer. It lives in one event loop and needs no locks. Memory is
bounded: the oldest entries go once ``cap`` is reached.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from notifier.emulator import DEV_MESSAGING_SERVICE_SID

API_VERSION = "2010-04-01"
WHATSAPP = "whatsapp:"
DEFAULT_CAP = 1_000_000

# How far along its lifecycle a status is; a message's status never moves backwards,
# even when its callbacks are sent out of order.
_RANK = {
    "accepted": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "read": 4,
}

_LEFT_TWILIO = frozenset({"sent", "delivered", "undelivered", "read"})


def rfc2822(moment: datetime) -> str:
    """Twilio's date format: ``Thu, 24 Aug 2023 05:01:45 +0000``."""
    return format_datetime(moment, usegmt=False)


def bare_number(address: str) -> str:
    """``whatsapp:+1415…`` -> ``+1415…`` (fault tables are keyed by bare numbers)."""
    return address.removeprefix(WHATSAPP)


@dataclass(slots=True)
class ReceivedRequest:
    """One create request as it arrived; the answer fields are filled in when sent."""

    index: int
    monotonic: float
    received_at: datetime
    account_sid: str
    params: list[tuple[str, str]]
    status_callback: str | None
    http_status: int | None = None
    """None while unanswered, and for hangs (the client never got an answer)."""
    error_code: int | None = None
    sid: str | None = None
    hung: bool = False

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)


@dataclass(slots=True)
class AcceptedMessage:
    """A message the emulator took, with what it answered and where it is now."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    """``From`` as answered (None when sent through a Messaging Service)."""
    sender: str
    """The sender callbacks name: ``From``, or the one the service picked."""
    messaging_service_sid: str | None
    body: str
    media_urls: list[str]
    content_sid: str | None
    content_variables: str | None
    status_callback: str | None
    validity_period: int | None
    status: str
    num_segments: str
    date_created: datetime
    monotonic: float
    params: list[tuple[str, str]]
    date_updated: datetime = field(init=False)
    date_sent: datetime | None = field(init=False)
    """When the message left Twilio (it reached sent, or further): None before."""
    error_code: int | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        self.date_updated = self.date_created
        self.date_sent = None

    @property
    def is_whatsapp(self) -> bool:
        return self.to.startswith(WHATSAPP)

    def advance(self, status: str, error_code: int | None, error_message: str | None) -> None:
        """Move to ``status`` unless the message is already further along."""
        if _RANK.get(status, 0) <= _RANK.get(self.status, 0):
            return
        self.status = status
        self.error_code = error_code
        self.error_message = error_message
        self.date_updated = datetime.now(UTC)
        if self.date_sent is None and status in _LEFT_TWILIO:
            self.date_sent = self.date_updated

    def to_resource(self) -> dict[str, Any]:
        """The message as Twilio's API shows it (``api.v2010.account.message``)."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent) if self.date_sent is not None else None,
            "date_updated": rfc2822(self.date_updated),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid or DEV_MESSAGING_SERVICE_SID,
            "num_media": str(len(self.media_urls)),
            "num_segments": self.num_segments,
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }

    def to_json(self) -> dict[str, Any]:
        """The resource plus what Twilio keeps but does not show (for ``/_emulator``)."""
        return self.to_resource() | {
            "media_urls": list(self.media_urls),
            "content_sid": self.content_sid,
            "content_variables": self.content_variables,
            "status_callback": self.status_callback,
            "validity_period": self.validity_period,
        }


@dataclass(slots=True)
class CallbackRecord:
    """One status callback: an HTTP attempt, or a planned one the faults dropped."""

    sid: str
    status: str
    url: str
    params: dict[str, str]
    signature: str
    monotonic: float
    attempt: int = 1
    duplicate: bool = False
    dropped: bool = False
    http_status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


@dataclass(slots=True)
class FetchRecord:
    """One ``GET …/Messages/{Sid}.json``: when it arrived and what it was answered."""

    sid: str
    monotonic: float
    received_at: datetime
    http_status: int | None = None  # None while the answer is being made


class EmulatorState:
    """Append-only record of traffic, with the few lookups tests need."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self._cap = cap
        self._requests: deque[ReceivedRequest] = deque(maxlen=cap)
        self._accepted: dict[str, AcceptedMessage] = {}
        self._callbacks: deque[CallbackRecord] = deque(maxlen=cap)
        self._fetches: deque[FetchRecord] = deque(maxlen=cap)
        self._request_count = 0
        self.callback_failures = 0
        """Callback attempts whose target was down or answered non-2xx."""

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every create request received (that passed auth), oldest first."""
        return list(self._requests)

    @property
    def accepted(self) -> list[AcceptedMessage]:
        """Every message taken, in order of acceptance."""
        return list(self._accepted.values())

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """Every callback attempt, dropped ones included (``dropped=True``), in order."""
        return list(self._callbacks)

    def record_request(
        self,
        account_sid: str,
        params: list[tuple[str, str]],
        arrived: tuple[float, datetime] | None = None,
    ) -> ReceivedRequest:
        """Record a create request; ``arrived`` is its (monotonic, wall) time, default now."""
        self._request_count += 1
        monotonic, wall = arrived or (time.monotonic(), datetime.now(UTC))
        request = ReceivedRequest(
            index=self._request_count,
            monotonic=monotonic,
            received_at=wall,
            account_sid=account_sid,
            params=params,
            status_callback=next((v for k, v in params if k == "StatusCallback"), None),
        )
        self._requests.append(request)
        return request

    def record_accepted(self, message: AcceptedMessage) -> None:
        if len(self._accepted) >= self._cap:
            del self._accepted[next(iter(self._accepted))]
        self._accepted[message.sid] = message

    def record_callback(self, record: CallbackRecord) -> None:
        self._callbacks.append(record)
        if not record.dropped and not record.ok:
            self.callback_failures += 1

    def record_fetch(self, sid: str) -> FetchRecord:
        """A fetch of message ``sid`` arrived (whatever the answer, set on the record)."""
        record = FetchRecord(sid, time.monotonic(), datetime.now(UTC))
        self._fetches.append(record)
        return record

    def fetches_of(self, sid: str) -> list[float]:
        """When message ``sid`` was fetched (monotonic times), oldest first."""
        return [f.monotonic for f in self._fetches if f.sid == sid]

    @property
    def fetches(self) -> list[FetchRecord]:
        """Every fetch, oldest first."""
        return list(self._fetches)

    @property
    def fetch_count(self) -> int:
        return len(self._fetches)

    def message(self, sid: str) -> AcceptedMessage | None:
        return self._accepted.get(sid)

    def forget(self, sid: str) -> bool:
        """Delete a message (Twilio's DELETE); whether there was one."""
        return self._accepted.pop(sid, None) is not None

    def accepted_by_body(self) -> dict[str, list[AcceptedMessage]]:
        """Accepted messages grouped by body: duplicates show up as lists longer than 1."""
        grouped: dict[str, list[AcceptedMessage]] = {}
        for message in self._accepted.values():
            grouped.setdefault(message.body, []).append(message)
        return grouped

    def accepted_to(self, to: str) -> list[AcceptedMessage]:
        """Accepted messages for a recipient, with or without the ``whatsapp:`` prefix."""
        return [m for m in self._accepted.values() if bare_number(m.to) == bare_number(to)]

    def callbacks_for(self, sid: str, *, sent_only: bool = True) -> list[CallbackRecord]:
        """A message's callbacks in the order they went out (without dropped ones)."""
        return [c for c in self._callbacks if c.sid == sid and not (sent_only and c.dropped)]

    def clear(self) -> None:
        self._requests.clear()
        self._accepted.clear()
        self._callbacks.clear()
        self._fetches.clear()
        self.callback_failures = 0

    async def wait_for(
        self,
        predicate: Callable[[EmulatorState], bool],
        within: float = 5.0,
        interval: float = 0.01,
    ) -> None:
        """Wait until ``predicate(self)`` holds; ``TimeoutError`` after ``within`` seconds.

        It polls: predicates also read message statuses, which change outside this record.
        """
        async with asyncio.timeout(within):
            while not predicate(self):  # noqa: ASYNC110
                await asyncio.sleep(interval)


def statuses(records: Iterable[CallbackRecord]) -> list[str]:
    """The ``MessageStatus`` values of ``records``, in order."""
    return [record.status for record in records]
