"""Money in admin notifications: exact decimals, ISO 4217 codes, en_US formatting.

Money is ``decimal.Decimal`` parsed from the proto's decimal strings, never a float:
admins compare these figures with their shop's books, so 3 x 0.10 must read 0.30,
not 0.30000000000000004 rounded by luck.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from babel.numbers import format_currency, get_currency_precision, is_currency

from notifier.domain.errors import Violation

LOCALE = "en_US"
# Long enough for any real price, short enough that price x quantity (int64) stays
# far inside the exact context below.
MAX_AMOUNT_CHARS = 32

_AMOUNT = re.compile(r"^[0-9]+(?:\.([0-9]+))?$")
_NEGATIVE = re.compile(r"^-[0-9]+(?:\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Enough digits for any product of a 32-character amount and an int64 quantity, and
# a trap on anything inexact: money arithmetic here either is exact or fails loudly.
_EXACT = Context(prec=100, traps=[Inexact, InvalidOperation, Overflow])

# -- money ----------------------------------------------------------------------------


def currency_known(code: str) -> bool:
    return bool(_CURRENCY.match(code)) and is_currency(code)


def check_currency(code: str, path: str, bad: list[Violation]) -> str | None:
    """The currency code, or None (with a violation) when it is not ISO 4217."""
    if not code:
        bad.append(Violation(path, "is required: an ISO 4217 code, e.g. USD, EUR, JPY"))
        return None
    if not currency_known(code):
        bad.append(Violation(path, "is not an ISO 4217 currency code, e.g. USD, EUR, JPY"))
        return None
    return code


def parse_money(raw: str, currency: str | None, path: str, bad: list[Violation]) -> Decimal | None:
    """Parse an exact, non-negative amount with no more decimals than ``currency`` has.

    Only plain digits with an optional decimal point are accepted: no sign, exponent,
    grouping or spaces, so "1e3" or "1,250" can never be read as something else. With
    an unknown currency (None) only the form is checked.
    """
    if not raw:
        bad.append(Violation(path, "is required: an exact decimal string, e.g. 12.50"))
        return None
    if len(raw) > MAX_AMOUNT_CHARS:
        bad.append(Violation(path, f"is longer than {MAX_AMOUNT_CHARS} characters"))
        return None
    if _NEGATIVE.match(raw):
        bad.append(Violation(path, "must not be negative"))
        return None
    match = _AMOUNT.match(raw)
    if match is None:
        bad.append(
            Violation(path, "must be a decimal number like 12.50 (digits and one point only)")
        )
        return None
    if currency is not None:
        allowed = get_currency_precision(currency)
        decimals = len(match.group(1) or "")
        if decimals > allowed:
            bad.append(Violation(path, f"has {decimals} decimal(s); {currency} allows {allowed}"))
            return None
    return Decimal(raw)


def line_total(unit_price: Decimal, quantity: int) -> Decimal:
    """unit price x quantity, exactly (the context traps anything inexact)."""
    return _EXACT.multiply(unit_price, Decimal(quantity))


def format_money(amount: Decimal, currency: str) -> str:
    """e.g. "$12.50", "¥1,250", "€12.50": the currency's own decimals, en_US style."""
    return str(format_currency(amount, currency, locale=LOCALE))


def canonical_amount(amount: Decimal, currency: str) -> str:
    """The one spelling of an amount for the payload hash: "12.5" and "12.50" are the
    same price."""
    places = Decimal(1).scaleb(-get_currency_precision(currency))
    return str(_EXACT.quantize(amount, places))
