"""Status callbacks: what Twilio posts to a message's ``StatusCallback``, signed as Twilio does.

After a message is accepted the emulator plans its lifecycle (sent -> delivered -> read
for WhatsApp, sent -> delivered for SMS, or a failure the faults chose), then posts one
form-encoded callback per step with ``X-Twilio-Signature`` computed by the ``twilio``
package's own ``RequestValidator``, so a receiver that validates real Twilio callbacks
validates these. A target that is down or answers non-2xx is logged and counted and
never breaks anything else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass

import aiohttp
from twilio.request_validator import RequestValidator

from notifier.emulator import whatsapp
from notifier.emulator.faults import Faults, error_message
from notifier.emulator.state import (
    API_VERSION,
    AcceptedMessage,
    CallbackRecord,
    EmulatorState,
    bare_number,
)

log = logging.getLogger(__name__)

CHANNEL_INSTALL_SID = "XE" + "0123456789abcdef" * 2


@dataclass(frozen=True, slots=True)
class PlannedCallback:
    """One step of a message's lifecycle: when, which status, and how many copies go out."""

    after_seconds: float
    status: str
    error_code: int | None = None
    copies: int = 1
    """0 when the faults drop it, 2 when they duplicate it."""


def _terminal(
    message: AcceptedMessage, faults: Faults, rng: random.Random
) -> tuple[str, int] | None:
    """The failure this message ends in, if any: per recipient first, then the draw."""
    draw = rng.random()
    chosen = faults.to_outcomes.get(bare_number(message.to)) or whatsapp.failure(
        message, faults.whatsapp_outcomes, faults.whatsapp_late_outcomes
    )
    if chosen is not None:
        return chosen
    edge = 0.0
    for status, (share, code) in sorted(faults.outcomes.items()):
        edge += share
        if draw < edge:
            return status, code
    return None


def plan_callbacks(
    message: AcceptedMessage, faults: Faults, rng: random.Random
) -> list[PlannedCallback]:
    """The callbacks ``message`` will get, in the order and at the times they go out."""
    times = [faults.sent_after_seconds, faults.delivered_after_seconds, faults.read_after_seconds]
    terminal = _terminal(message, faults, rng)
    steps: list[tuple[str, int | None]]
    if terminal is None:
        steps = [("sent", None), ("delivered", None)]
        steps += [("read", None)] if message.is_whatsapp else []
    elif terminal[0] == "failed":
        steps = [terminal]
    else:
        steps = [("sent", None), terminal]
    statuses = list(reversed(steps)) if faults.reorder_callbacks else steps
    dropped = bare_number(message.to) in faults.to_drop_callbacks
    return [
        PlannedCallback(after, status, code, 0 if dropped else _copies(faults, rng))
        for after, (status, code) in zip(times, statuses, strict=False)
    ]


def _copies(faults: Faults, rng: random.Random) -> int:
    drop, duplicate = rng.random(), rng.random()
    if drop < faults.drop_callback_fraction:
        return 0
    return 2 if duplicate < faults.duplicate_callback_fraction else 1


def callback_params(
    message: AcceptedMessage, status: str, error_code: int | None
) -> dict[str, str]:
    """The form Twilio posts for ``status`` (WhatsApp adds its channel fields)."""
    params = {
        "AccountSid": message.account_sid,
        "ApiVersion": API_VERSION,
        "From": message.sender,
        "MessageSid": message.sid,
        "MessageStatus": status,
        "SmsSid": message.sid,
        "SmsStatus": status,
        "To": message.to,
    }
    if message.messaging_service_sid:
        params["MessagingServiceSid"] = message.messaging_service_sid
    if message.is_whatsapp:
        params["ChannelPrefix"] = "whatsapp"
        params["ChannelInstallSid"] = CHANNEL_INSTALL_SID
        params["ChannelToAddress"] = bare_number(message.to)
    if status == "read":
        params["EventType"] = "READ"
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
        params["ErrorMessage"] = error_message(error_code)
    return params


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One planned callback, signed and ready to post (possibly more than once)."""

    message: AcceptedMessage
    step: PlannedCallback
    url: str
    params: dict[str, str]
    signature: str
    token: str
    """``I-Twilio-Idempotency-Token``: the same on duplicates, as on Twilio's retries."""

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-Twilio-Signature": self.signature,
            "I-Twilio-Idempotency-Token": self.token,
            "User-Agent": "TwilioProxy/1.1",
        }

    def record(self, attempt: int = 1, duplicate: bool = False) -> CallbackRecord:
        return CallbackRecord(
            sid=self.message.sid,
            status=self.step.status,
            url=self.url,
            params=self.params,
            signature=self.signature,
            monotonic=time.monotonic(),
            attempt=attempt,
            duplicate=duplicate,
            dropped=self.step.copies == 0,
        )


class CallbackSender:
    """Sends status callbacks through one shared aiohttp session, as background tasks."""

    def __init__(self, auth_token: str, state: EmulatorState) -> None:
        self._validator = RequestValidator(auth_token)
        self._state = state
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Callbacks planned or in flight."""
        return len(self._tasks)

    def schedule(
        self, message: AcceptedMessage, plan: list[PlannedCallback], faults: Faults
    ) -> None:
        """Start ``message``'s lifecycle; each step runs on its own, like Twilio's.

        Without a ``StatusCallback`` the status still moves on (a fetch shows it).
        """
        if self._closed:  # a request answered while the server stops: nothing more goes out
            return
        for step in plan:
            task = asyncio.create_task(self._run_step(message, step, faults))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cancel_pending(self) -> None:
        """Forget every planned callback (on reset and on shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        await self.cancel_pending()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run_step(
        self, message: AcceptedMessage, step: PlannedCallback, faults: Faults
    ) -> None:
        await asyncio.sleep(step.after_seconds)
        message.advance(
            step.status,
            step.error_code,
            None if step.error_code is None else error_message(step.error_code),
        )
        url = message.status_callback
        if url is None:
            return
        params = callback_params(message, step.status, step.error_code)
        signature = self._validator.compute_signature(url, params)
        outgoing = _Outgoing(message, step, url, params, signature, uuid.uuid4().hex)
        if step.copies == 0:
            self._state.record_callback(outgoing.record())
            return
        for copy in range(step.copies):
            await self._deliver(outgoing, faults, duplicate=copy > 0)

    async def _deliver(self, outgoing: _Outgoing, faults: Faults, *, duplicate: bool) -> None:
        """Post once, plus ``callback_retries`` more times while the target fails."""
        for attempt in range(1, faults.callback_retries + 2):
            record = outgoing.record(attempt, duplicate)
            await self._post(record, outgoing.headers, faults.callback_timeout_seconds)
            self._state.record_callback(record)
            if record.ok:
                return
            log.warning(
                "status callback %s (%s) to %s failed on attempt %d: %s",
                record.sid,
                record.status,
                record.url,
                attempt,
                record.error or f"HTTP {record.http_status}",
            )
            if attempt <= faults.callback_retries:
                await asyncio.sleep(faults.callback_retry_delay_seconds)

    async def _post(self, record: CallbackRecord, headers: dict[str, str], limit: float) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                record.url,
                data=record.params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as response:
                await response.read()
                record.http_status = response.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad target must never break the emulator
            record.error = f"{type(exc).__name__}: {exc}"
