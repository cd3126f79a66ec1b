"""The data lifecycle's rules: durations as configured, and how often the purge runs."""

from __future__ import annotations

import pytest

from notifier.config import ConfigError, load_settings
from notifier.domain.lifecycle import Lifecycle, allowed_overshoot_ms, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90d", 90 * 86_400_000), ("12h", 12 * 3_600_000), ("15m", 900_000), ("30s", 30_000)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "0s", "90", "1w", "-1d", "1.5h", "off"])
def test_bad_durations_say_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90d, 12h, 30s"):
        parse_duration(text)


def test_off_only_where_allowed() -> None:
    assert parse_duration("off", allow_off=True) is None
    assert parse_duration("7d", allow_off=True) == 7 * 86_400_000


@pytest.mark.parametrize(
    ("limit_ms", "overshoot_ms"),
    [
        (3_000, 1_000),  # a tenth is 300 ms: one second is more
        (60_000, 6_000),  # a tenth
        (7 * 86_400_000, 3_600_000),  # a tenth is 16.8 h: capped at an hour
    ],
)
def test_allowed_overshoot(limit_ms: int, overshoot_ms: int) -> None:
    assert allowed_overshoot_ms(limit_ms) == overshoot_ms


@pytest.mark.parametrize(
    ("retention", "redact", "interval"),
    [
        (90 * 86_400_000, 7 * 86_400_000, 1_800_000),  # defaults: every half hour
        (3_000, 1_000, 500),
        (90 * 86_400_000, None, 1_800_000),  # redaction off
        (60_000, None, 3_000),
    ],
)
def test_interval_is_half_the_tightest_overshoot(
    retention: int, redact: int | None, interval: int
) -> None:
    assert Lifecycle(retention, redact).interval_ms == interval


@pytest.mark.parametrize(
    ("env", "named"),
    [({"NOTIFIER_RETENTION": "90 days"}, "NOTIFIER_RETENTION"),
     ({"NOTIFIER_REDACT_AFTER": "soon"}, "NOTIFIER_REDACT_AFTER")],
)  # fmt: skip
def test_settings_name_the_bad_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(**env)


def test_settings_defaults() -> None:
    assert load_settings().lifecycle == Lifecycle(90 * 86_400_000, 7 * 86_400_000)
    assert load_settings(NOTIFIER_REDACT_AFTER="off").lifecycle.redact_after_ms is None
