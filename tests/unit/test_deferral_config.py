"""NOTIFIER_DEFERRAL_BASE: five minutes by default, read as a duration, in the retry
policy both the dispatcher and the status reports use; a bad value names the variable."""

from __future__ import annotations

import pytest

from notifier.config import ConfigError, load_settings


def test_default_is_five_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env file here
    assert load_settings().retry_policy().deferred_base_seconds == 300.0


def test_base_is_read_with_the_other_retry_settings() -> None:
    policy = load_settings(
        NOTIFIER_DEFERRAL_BASE="2s", NOTIFIER_RETRY_MAX_ATTEMPTS="4"
    ).retry_policy()
    assert (policy.deferred_base_seconds, policy.max_attempts) == (2.0, 4)


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(NOTIFIER_DEFERRAL_BASE="soon")
    assert "NOTIFIER_DEFERRAL_BASE" in str(info.value)
