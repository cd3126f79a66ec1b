"""The Python client's options, checked before any connection is made."""

from __future__ import annotations

import pytest

from notifier_client import NotifierClient


def test_a_token_is_not_sent_in_plaintext_over_a_network() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        NotifierClient("10.1.2.3:50051", token="s3cret")
