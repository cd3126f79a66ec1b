"""NOTIFIER_SMS_FALLBACK_CODES and NOTIFIER_NOT_ON_WHATSAPP_TTL: the spec's defaults,
values as people write them, and errors that name the variable."""

from __future__ import annotations

import pytest

from notifier.config import ConfigError, load_settings
from notifier.domain.fallback import FallbackPolicy


def test_defaults_are_63003_63024_63032_and_thirty_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env file here
    policy = load_settings().fallback_policy()
    assert policy == FallbackPolicy(frozenset({63003, 63024, 63032}), 30 * 86_400_000)


def test_codes_and_ttl_are_read() -> None:
    s = load_settings(
        NOTIFIER_SMS_FALLBACK_CODES="63024, 30008", NOTIFIER_NOT_ON_WHATSAPP_TTL="12h"
    )
    assert s.fallback_policy() == FallbackPolicy(frozenset({63024, 30008}), 12 * 3_600_000)
    assert load_settings(NOTIFIER_SMS_FALLBACK_CODES="").fallback_policy().codes == frozenset()


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"NOTIFIER_SMS_FALLBACK_CODES": "63024,abc"}, "NOTIFIER_SMS_FALLBACK_CODES", "codes"),
        ({"NOTIFIER_NOT_ON_WHATSAPP_TTL": "a month"}, "NOTIFIER_NOT_ON_WHATSAPP_TTL", "30s"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**env)
    assert named in str(info.value)
    assert says in str(info.value)
