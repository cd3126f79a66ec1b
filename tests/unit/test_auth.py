"""Caller tokens as configured: each is compared with every digest, and a bad entry is
named without being echoed."""

from __future__ import annotations

import hmac

import pytest

from notifier.api.auth import TokenChecker, token_digest
from notifier.config import ConfigError, load_settings


def test_the_token_is_compared_with_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [token_digest(t) for t in ("a", "b", "c")]
    checker = TokenChecker(digests)
    calls = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token, accepted in (("a", True), ("c", True), ("d", False)):
        calls.clear()
        assert checker.accepts(token) is accepted
        assert len(calls) == 3  # no early exit on a match


def test_token_digest_errors_say_which_entry_without_echoing_it() -> None:
    raw = "my-raw-api-token-pasted-by-mistake"
    with pytest.raises(ConfigError) as info:
        load_settings(NOTIFIER_API_TOKENS=f"{token_digest('x')},{raw}, {'f' * 63}")
    text = str(info.value)
    assert "NOTIFIER_API_TOKENS: entry 2 is not a SHA-256 hex digest" in text
    assert "entry 3 is not a SHA-256 hex digest" in text
    assert "(of 3 entries)" in text
    assert raw not in text
    assert "f" * 63 not in text
