"""NOTIFIER_RECONCILE_*: durations as people write them, defaults from the spec, and
errors that name the variable."""

from __future__ import annotations

import pytest

from notifier.config import ConfigError, load_settings


def test_defaults_are_ten_minutes_and_three_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env file here
    s = load_settings()
    assert (s.reconcile_after_seconds, s.reconcile_give_up_seconds) == (600, 72 * 3600)
    assert s.reconcile_rate_per_second == 5


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("72h", 259_200), ("2d", 172_800), ("1.5s", 1.5), ("90", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    s = load_settings(NOTIFIER_RECONCILE_AFTER=text, NOTIFIER_RECONCILE_GIVE_UP="30d")
    assert s.reconcile_after_seconds == seconds


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"NOTIFIER_RECONCILE_AFTER": "10 minutes"}, "NOTIFIER_RECONCILE_AFTER", "30s, 10m"),
        ({"NOTIFIER_RECONCILE_GIVE_UP": "-1h"}, "NOTIFIER_RECONCILE_GIVE_UP", "duration"),
        ({"NOTIFIER_RECONCILE_AFTER": "0s"}, "NOTIFIER_RECONCILE_AFTER", "longer than 0"),
        (
            {"NOTIFIER_RECONCILE_AFTER": "3d", "NOTIFIER_RECONCILE_GIVE_UP": "72h"},
            "NOTIFIER_RECONCILE_GIVE_UP",
            "must exceed NOTIFIER_RECONCILE_AFTER",
        ),
        (
            {"NOTIFIER_RECONCILE_RATE_PER_SECOND": "0"},
            "NOTIFIER_RECONCILE_RATE_PER_SECOND",
            "greater",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**env)
    assert named in str(info.value)
    assert says in str(info.value)
