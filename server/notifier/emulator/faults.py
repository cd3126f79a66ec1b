"""Fault configuration, and the seeded decisions it implies for each create request.

Faults are data (``Faults``, JSON-friendly, so they can be posted to
``/_emulator/faults`` or given on the command line); ``FaultInjector`` turns them into
one decision per request. Every random choice comes from a generator derived from the
seed and the request's (or message's) sequence number, so a run with the same seed and
the same sequence of requests takes the same decisions, whatever the timing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    field_validator,
    model_validator,
)

from notifier.emulator import whatsapp

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
TerminalStatus = Literal["failed", "undelivered"]

RATE_LIMITED = 20429
AMBIGUOUS = 20500  # Twilio failed the answer: the message may or may not have been taken

_HTTP_STATUS = {
    20003: 401,
    20404: 404,
    20429: 429,
    20500: 500,
    20503: 503,
    30500: 500,
    63018: 429,
}


ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "Invalid 'To' Phone Number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21608: "The number is unverified. Trial accounts cannot send messages to unverified numbers",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number is not currently reachable using the 'From' phone number",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30500: "Internal failure",
    63016: "Failed to send freeform message because you are outside the allowed window.",
    63018: "Rate limit exceeded for Channel",
    63024: "Invalid message recipient",
}


def error_message(code: int) -> str:
    """Twilio's wording for ``code`` (a generic one for codes the table lacks)."""
    return ERROR_MESSAGES.get(code) or whatsapp.MESSAGES.get(code, f"Emulated Twilio error {code}")


def http_status_for(code: int) -> int:
    """The HTTP status Twilio answers with for error ``code`` (400 for validation codes)."""
    return _HTTP_STATUS.get(code, 400)


class Faults(BaseModel):
    """What the emulator does wrong, and how fast it does things right.

    Fractions are per create request (or per callback) and drawn from ``seed``. The
    request fractions (``rate_limit_fraction``, ``error_rates``, ``hang_fraction``) are
    exclusive slices of one draw, so together they may not exceed 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    seed: int = 0
    error_rates: dict[int, Fraction] = Field(default_factory=dict)
    """Twilio error code -> fraction of create requests answered with that error."""
    rate_limit_fraction: Fraction = 0.0
    """Fraction of create requests answered 429 / 20429 with a ``Retry-After`` header."""
    retry_after_seconds: NonNegativeFloat = 1.0
    """``Retry-After`` value (real Twilio sends whole seconds; fractions help fast tests)."""
    rate_limit_burst: NonNegativeInt = 0
    """The next N create requests (counted from when these faults are set) get 429."""
    latency_seconds: NonNegativeFloat = 0.0
    latency_jitter_seconds: NonNegativeFloat = 0.0
    """Extra delay drawn uniformly from [0, jitter) on top of ``latency_seconds``."""
    hang_fraction: Fraction = 0.0
    """Fraction of create requests never answered (until the client gives up)."""
    hang_cap_seconds: NonNegativeFloat = 3600.0
    record_on_error: bool = False
    """On 20500 and hangs, accept the message anyway: the ambiguous case."""
    to_errors: dict[str, int] = Field(default_factory=dict)
    """Recipient (E.164, no ``whatsapp:``) -> error code answered to every send to it."""
    outcomes: dict[TerminalStatus, tuple[Fraction, int]] = Field(default_factory=dict)
    """``failed``/``undelivered`` -> (fraction of accepted messages, error code)."""
    to_outcomes: dict[str, tuple[TerminalStatus, int]] = Field(default_factory=dict)
    """Recipient (E.164) -> (``failed``/``undelivered``, error code), deterministic."""
    whatsapp_outcomes: dict[str, int] = Field(default_factory=dict)
    """Recipient (E.164) -> WhatsApp code for WhatsApp sends only (emulator/whatsapp.py):
    63003/63024/63032 fail after acceptance, 63018/63049 refuse the request."""
    whatsapp_late_outcomes: bool = False
    """63018/63049 of ``whatsapp_outcomes`` fail after acceptance too (a ``failed``
    callback), as real Twilio mostly reports them, instead of refusing the request."""
    drop_callback_fraction: Fraction = 0.0
    to_drop_callbacks: list[str] = Field(default_factory=list)
    """Recipients (E.164) whose callbacks are all dropped: only a fetch tells their fate."""
    fetch_error: int | None = None
    """Twilio error code answered to every fetch (``GET …/Messages/{Sid}.json``)."""
    to_fetch_errors: dict[str, int] = Field(default_factory=dict)
    """Recipient (E.164) -> error code answered to every fetch of a message to it."""
    duplicate_callback_fraction: Fraction = 0.0
    reorder_callbacks: bool = False
    """Send each message's callbacks in reverse order (the timing slots stay the same)."""
    sent_after_seconds: NonNegativeFloat = 0.02
    delivered_after_seconds: NonNegativeFloat = 0.04
    read_after_seconds: NonNegativeFloat = 0.06
    """Callback times, counted from the message's acceptance."""
    callback_retries: NonNegativeInt = 0
    """Extra attempts for a callback whose target is down or answers non-2xx."""
    callback_retry_delay_seconds: NonNegativeFloat = 0.05
    callback_timeout_seconds: Annotated[float, Field(gt=0.0)] = 15.0
    """How long a callback target may take to answer (Twilio waits about 15 s)."""

    @field_validator("to_drop_callbacks", mode="before")
    @classmethod
    def _bare_list(cls, numbers: Any) -> Any:
        if isinstance(numbers, list):
            return [str(n).removeprefix("whatsapp:") for n in numbers]
        return numbers

    @field_validator("whatsapp_outcomes")
    @classmethod
    def _whatsapp_codes(cls, table: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(table.values()) - whatsapp.CODES)
        if unknown:
            raise ValueError(f"whatsapp_outcomes codes must be in {sorted(whatsapp.CODES)}")
        return table

    @field_validator(
        "to_errors", "to_outcomes", "whatsapp_outcomes", "to_fetch_errors", mode="before"
    )
    @classmethod
    def _bare_numbers(cls, table: Any) -> Any:
        """Recipients may be written with ``whatsapp:``; they are matched without it."""
        if isinstance(table, dict):
            return {str(to).removeprefix("whatsapp:"): value for to, value in table.items()}
        return table

    @model_validator(mode="after")
    def _fractions_fit(self) -> Self:
        request_share = self.rate_limit_fraction + sum(self.error_rates.values())
        if request_share + self.hang_fraction > 1.0 + 1e-9:
            raise ValueError("rate_limit_fraction + error_rates + hang_fraction exceed 1")
        if sum(share for share, _ in self.outcomes.values()) > 1.0 + 1e-9:
            raise ValueError("outcomes fractions exceed 1")
        return self


@dataclass(frozen=True, slots=True)
class RequestFate:
    """What the emulator does with one create request once it has read it."""

    delay_seconds: float = 0.0
    error_code: int | None = None
    hang: bool = False
    record_anyway: bool = False
    """Accept the message although the answer fails (20500 or hang with record_on_error)."""

    @property
    def takes_message(self) -> bool:
        """Whether the message is accepted (recorded, callbacks planned) before answering."""
        return (self.error_code is None and not self.hang) or self.record_anyway

    @property
    def rate_limited(self) -> bool:
        """429s come before validation: a throttled request is never looked at."""
        return self.error_code == RATE_LIMITED


class FaultInjector:
    """Holds the current faults and the counters their decisions depend on."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._faults = Faults()
        self._burst_left = 0
        self._requests = 0
        self._messages = 0
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        """Switch faults; the burst and the seeded sequences start again from here."""
        self._faults = faults
        self._burst_left = faults.rate_limit_burst
        self._requests = 0
        self._messages = 0

    def rng(self, kind: str, index: int) -> random.Random:
        """A generator owned by one request or message, so timing cannot reorder draws."""
        return random.Random(f"{self._faults.seed}:{kind}:{index}")

    def next_message_rng(self) -> random.Random:
        """The generator for the next accepted message's delivery (outcome, callbacks)."""
        self._messages += 1
        return self.rng("message", self._messages)

    def request_fate(self, to_number: str) -> RequestFate:
        """Decide one create request: burst, then per-recipient errors, then the draw."""
        faults = self._faults
        self._requests += 1
        rng = self.rng("request", self._requests)
        delay = faults.latency_seconds + rng.uniform(0.0, faults.latency_jitter_seconds)
        draw = rng.random()
        if self._burst_left > 0:
            self._burst_left -= 1
            return RequestFate(delay, RATE_LIMITED)
        if to_number in faults.to_errors:
            return self._error(delay, faults.to_errors[to_number])
        return self._drawn(delay, draw)

    def _drawn(self, delay: float, draw: float) -> RequestFate:
        faults = self._faults
        slices = [(faults.rate_limit_fraction, RATE_LIMITED)]
        slices += [(share, code) for code, share in sorted(faults.error_rates.items())]
        edge = 0.0
        for share, code in slices:
            edge += share
            if draw < edge:
                return self._error(delay, code)
        if draw < edge + faults.hang_fraction:
            return RequestFate(delay, hang=True, record_anyway=faults.record_on_error)
        return RequestFate(delay)

    def _error(self, delay: float, code: int) -> RequestFate:
        record = code == AMBIGUOUS and self._faults.record_on_error
        return RequestFate(delay, code, record_anyway=record)
