"""tools.identity tokens: what gpusim accepts and refuses."""

from __future__ import annotations

import time

import pytest

from tools.gpusim.config import Config
from tools.identity import tokens

KEY = "unit-test-signing-key-0123456789abcdef"
AUD = "https://cognitiveservices.azure.com"


def test_token_for_resource_verifies_with_audience_stripped_of_default() -> None:
    token, expires_on = tokens.issue(KEY, AUD + "/.default", lifetime_s=60, client_id="abc")
    claims = tokens.verify(token, KEY, AUD)
    assert claims["aud"] == AUD and claims["appid"] == "abc" and claims["exp"] == expires_on


@pytest.mark.parametrize(
    ("key", "audience", "later_s", "reason"),
    [
        ("another-key-0123456789abcdef-0123456789", AUD, None, "invalid"),
        (KEY, "https://ml.azure.com", None, "audience"),
        (KEY, AUD, 120.0, "expired"),
    ],
)
def test_refused_tokens_say_why(
    key: str, audience: str, later_s: float | None, reason: str
) -> None:
    token, _ = tokens.issue(KEY, AUD, lifetime_s=60)
    now = None if later_s is None else time.time() + later_s
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(token, key, audience, now=now)
    assert info.value.reason == reason


def test_gpusim_default_key_matches_identity_default() -> None:
    assert Config().identity_signing_key == tokens.DEFAULT_SIGNING_KEY
