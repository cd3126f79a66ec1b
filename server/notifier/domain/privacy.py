"""How personal data is shown where it must not appear in full: logs and traces.

A phone number identifies a person, so logs and spans carry it masked: the country
code (enough to see which route or region a problem is about) and the last four digits
(enough to tell two recipients apart when reading one incident), never the rest. One
function does it, so every place masks the same way and a reader learns one format.
"""

from __future__ import annotations

import re

import phonenumbers

MASK = "•••"
_PREFIXES = ("whatsapp:",)
# Anything that looks like an E.164 number, with or without a channel prefix: the safety
# net for text that may quote a number (error messages from elsewhere, tracebacks).
_NUMBER_IN_TEXT = re.compile(r"\+[1-9]\d{5,14}\b")


def mask_phone(value: str) -> str:
    """``+14155550100`` -> ``+1•••0100``; ``whatsapp:`` is kept; a prefix-less or
    unparsable value shows only its last two characters, since its country code is
    not known."""
    prefix = next((p for p in _PREFIXES if value.lower().startswith(p)), "")
    number = value[len(prefix) :].strip()
    try:
        country = phonenumbers.parse(number, None).country_code
    except phonenumbers.NumberParseException:
        country = None
    digits = "".join(ch for ch in number if ch.isdigit())
    if country is None or len(digits) < len(str(country)) + 7:  # at least 3 digits hidden
        return f"{prefix}{MASK}{digits[-2:]}" if len(digits) > 4 else f"{prefix}{MASK}"
    return f"{prefix}+{country}{MASK}{digits[-4:]}"


def mask_phones_in(text: str) -> str:
    """``text`` with every E.164-looking number in it masked."""
    return _NUMBER_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
