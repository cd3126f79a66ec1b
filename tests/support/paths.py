"""Files the tests read from the repository: the README, and Twilio's own OpenAPI
description of the Messages API (tests/contract, Apache-2.0, see NOTICE)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TWILIO_SPEC = ROOT / "tests" / "contract" / "twilio_messages_v2010.json"
