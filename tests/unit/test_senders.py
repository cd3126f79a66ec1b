"""NOTIFIER_SENDERS as pure rules (dispatch/senders.py): parsing, completing a named
profile from the default one, the From each channel gets and the key of its limit."""

from __future__ import annotations

import json
import re

import pytest

from notifier.config import ConfigError, load_settings
from notifier.dispatch.senders import SenderProfile, parse_senders, resolve

MG = "MG" + "0" * 32
DEFAULT = SenderProfile(name="default", whatsapp_from="whatsapp:+14155238886", rate_per_second=80)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("{}", {}),
        (
            '{"brand": {"whatsapp_from": "whatsapp:+14155550111", "rate_per_second": 5}}',
            {"brand": SenderProfile("brand", "whatsapp:+14155550111", rate_per_second=5.0)},
        ),
        (
            '{"sms": {"sms_from": "+14155550122"}}',
            {"sms": SenderProfile("sms", sms_from="+14155550122")},
        ),
        (
            json.dumps({"svc": {"messaging_service_sid": MG, "rate_per_second": 0.5}}),
            {"svc": SenderProfile("svc", messaging_service_sid=MG, rate_per_second=0.5)},
        ),
    ],
)
def test_good_senders(text: str, expected: dict[str, SenderProfile]) -> None:
    assert parse_senders(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "is not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"b": 3}', "sender 'b' must be a JSON object"),
        ('{"b c": {}}', "a sender name must be letters"),
        ('{"default": {}}', "sender 'default' comes from TWILIO_WHATSAPP_FROM"),
        ('{"b": {"from": "+1"}}', "sender 'b': unknown key(s) from"),
        ('{"b": {"whatsapp_from": "+14155550111"}}', "whatsapp_from must be whatsapp:+E.164"),
        ('{"b": {"sms_from": "whatsapp:+14155550111"}}', "sms_from must be an E.164 number"),
        ('{"b": {"messaging_service_sid": "MG1"}}', "messaging_service_sid must be MG"),
        ('{"b": {"rate_per_second": 0}}', "rate_per_second must be a number above 0"),
        ('{"b": {"rate_per_second": true}}', "rate_per_second must be a number above 0"),
        ('{"b": {"rate_per_second": "80"}}', "rate_per_second must be a number above 0"),
    ],
)
def test_bad_senders(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_senders(text)


def test_a_profile_without_a_from_sends_from_the_defaults_under_its_own_limit() -> None:
    profiles = resolve(DEFAULT, parse_senders('{"slow": {"rate_per_second": 2}}'))
    slow = profiles["slow"]
    assert slow.from_for("whatsapp") == "whatsapp:+14155238886"
    assert slow.rate_per_second == 2
    assert slow.limit_key == "profile:slow"
    assert profiles["default"].limit_key == "+14155238886"  # as before profiles existed


def test_a_profile_with_its_own_from_takes_nothing_of_the_defaults_sending_keys() -> None:
    profiles = resolve(DEFAULT, parse_senders('{"sms": {"sms_from": "+14155550122"}}'))
    sms = profiles["sms"]
    assert sms.from_for("sms") == "+14155550122"
    assert sms.from_for("whatsapp") is None
    assert sms.rate_per_second == 80  # the default's rate, its own limit


@pytest.mark.parametrize(
    ("profile", "channel", "sender"),
    [
        (
            SenderProfile("a", whatsapp_from="whatsapp:+14155550111"),
            "whatsapp",
            "whatsapp:+14155550111",
        ),
        (SenderProfile("a", whatsapp_from="whatsapp:+14155550111"), "sms", "+14155550111"),
        (
            SenderProfile("a", whatsapp_from="whatsapp:+1415555011", sms_from="+14155550122"),
            "sms",
            "+14155550122",
        ),
        (SenderProfile("a", messaging_service_sid=MG), "whatsapp", None),
    ],
)
def test_from_of_each_channel(profile: SenderProfile, channel: str, sender: str | None) -> None:
    assert profile.from_for(channel) == sender


def test_settings_name_the_variable_and_a_tokens_unknown_sender() -> None:
    with pytest.raises(ConfigError, match="NOTIFIER_SENDERS: sender 'b': unknown key"):
        load_settings(NOTIFIER_SENDERS='{"b": {"x": 1}}')
    digest = "ab" * 32
    with pytest.raises(ConfigError) as info:
        load_settings(
            NOTIFIER_SENDERS='{"brand": {"rate_per_second": 5}}',
            NOTIFIER_API_TOKENS=f"{digest},mkt:send:{digest.replace('a', 'e')}:brand+nope",
        )
    assert "NOTIFIER_API_TOKENS: entry 2 names unknown sender(s) nope" in str(info.value)
    assert digest not in str(info.value)
    settings = load_settings(NOTIFIER_SENDERS='{"brand": {"rate_per_second": 5}}')
    assert list(settings.sender_profiles) == ["default", "brand"]
