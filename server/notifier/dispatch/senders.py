"""Sender profiles (issue 16): several WhatsApp numbers, an SMS number or messaging
services, each with its own From and its own rate limit.

``NOTIFIER_SENDERS`` is a JSON object, name -> {"whatsapp_from": "whatsapp:+…",
"sms_from": "+…", "messaging_service_sid": "MG…", "rate_per_second": 80}, any subset of
the keys. The profile named ``default`` comes from ``TWILIO_WHATSAPP_FROM`` /
``TWILIO_MESSAGING_SERVICE_SID`` and ``NOTIFIER_RATE_LIMIT_PER_SECOND``. A named profile
that names no From at all (no whatsapp_from, sms_from or messaging_service_sid) sends
from the default's, under a limit of its own; one without ``rate_per_second`` has the
default's rate (its own limit all the same). Parsing is pure: errors are ValueErrors
naming the profile and the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from notifier.domain.model import DEFAULT_SENDER

WHATSAPP = "whatsapp:"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = frozenset({"whatsapp_from", "sms_from", "messaging_service_sid", "rate_per_second"})
MAX_RATE = 10_000.0


@dataclass(frozen=True, slots=True)
class SenderProfile:
    name: str
    whatsapp_from: str | None = None  # "whatsapp:+14155238886"
    sms_from: str | None = None  # "+14155238886"
    messaging_service_sid: str | None = None
    rate_per_second: float | None = None  # None: the default's

    @property
    def limit_key(self) -> str:
        """Whose rate limit a send counts against (the send_slots row on PostgreSQL):
        the default keeps its historical key (its messaging service or number), so a
        rolling upgrade shares one limit; a named profile is limited by its name."""
        if self.name != DEFAULT_SENDER:
            return "profile:" + self.name
        return self.messaging_service_sid or (self.whatsapp_from or "").removeprefix(WHATSAPP)

    def from_for(self, channel: str) -> str | None:
        """The ``From`` of a message on ``channel`` (None: the messaging service picks)."""
        if channel == "whatsapp":
            if self.whatsapp_from is None:
                return None
            return WHATSAPP + self.whatsapp_from.removeprefix(WHATSAPP)
        if self.sms_from is not None:
            return self.sms_from
        if self.whatsapp_from is not None:  # one number for both channels, as before
            return self.whatsapp_from.removeprefix(WHATSAPP)
        return None


def _check_profile(name: str, raw: object) -> SenderProfile:
    where = f"sender '{name}'" if _NAME.match(name) else "a sender name"
    if not _NAME.match(name):
        raise ValueError(f"{where} must be letters, digits, '_', '.' or '-' (at most 64)")
    if name == DEFAULT_SENDER:
        raise ValueError(
            "sender 'default' comes from TWILIO_WHATSAPP_FROM / TWILIO_MESSAGING_SERVICE_SID "
            "and NOTIFIER_RATE_LIMIT_PER_SECOND; name the others"
        )
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    wa, sms, service = (
        raw.get("whatsapp_from"),
        raw.get("sms_from"),
        raw.get("messaging_service_sid"),
    )
    rate = raw.get("rate_per_second")
    if wa is not None and (
        not isinstance(wa, str)
        or not wa.startswith(WHATSAPP)
        or not _E164.match(wa.removeprefix(WHATSAPP))
    ):
        raise ValueError(
            f"{where}: whatsapp_from must be whatsapp:+E.164, e.g. whatsapp:+14155238886"
        )
    if sms is not None and (not isinstance(sms, str) or not _E164.match(sms)):
        raise ValueError(f"{where}: sms_from must be an E.164 number, e.g. +14155238886")
    if service is not None and (not isinstance(service, str) or not _SERVICE_SID.match(service)):
        raise ValueError(f"{where}: messaging_service_sid must be MG followed by 32 hex digits")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE
    ):
        raise ValueError(f"{where}: rate_per_second must be a number above 0, at most {MAX_RATE:g}")
    return SenderProfile(
        name=name,
        whatsapp_from=wa,
        sms_from=sms,
        messaging_service_sid=service,
        rate_per_second=None if rate is None else float(rate),
    )


def parse_senders(text: str) -> dict[str, SenderProfile]:
    """The named profiles of ``NOTIFIER_SENDERS`` (empty text: none)."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object: {"name": {"whatsapp_from": …}, …}')
    return {name: _check_profile(name, raw) for name, raw in data.items()}


def resolve(default: SenderProfile, named: Mapping[str, SenderProfile]) -> dict[str, SenderProfile]:
    """Every profile by name, ``default`` first, each named one completed with the
    default's sending keys it leaves out and the default's rate when it sets none."""
    profiles = {DEFAULT_SENDER: replace(default, name=DEFAULT_SENDER)}
    for name, profile in named.items():
        own_from = profile.whatsapp_from or profile.sms_from or profile.messaging_service_sid
        profiles[name] = replace(
            profile,
            whatsapp_from=profile.whatsapp_from if own_from else default.whatsapp_from,
            sms_from=profile.sms_from if own_from else default.sms_from,
            messaging_service_sid=(
                profile.messaging_service_sid if own_from else default.messaging_service_sid
            ),
            rate_per_second=profile.rate_per_second or default.rate_per_second,
        )
    return profiles
