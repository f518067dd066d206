"""devhost's function-key check, level by level, as the Functions host applies it."""

from __future__ import annotations

from tools.devhost.keys import HostKeys, auth_level_of

KEYS = HostKeys(("fk1", "fk2"), "master")


def test_levels() -> None:
    assert KEYS.allows("anonymous", None)
    assert not KEYS.allows("function", None)
    assert not KEYS.allows("function", "")
    assert not KEYS.allows("function", "fk3")
    assert KEYS.allows("function", "fk2")
    assert KEYS.allows("FUNCTION", "master")
    assert not KEYS.allows("admin", "fk1")  # a function key is not enough for admin
    assert KEYS.allows("admin", "master")


def test_header_first_then_code_query() -> None:
    headers = [(b"X-Functions-Key", b"from-header")]
    assert HostKeys.presented(headers, b"code=from-query") == "from-header"
    assert HostKeys.presented([], b"a=1&code=from-query") == "from-query"
    assert HostKeys.presented([], b"code=") is None


def test_settings_and_generated_keys() -> None:
    keys = HostKeys.from_settings({"DEVHOST_FUNCTION_KEYS": " a , b ", "DEVHOST_MASTER_KEY": "m"})
    assert keys == HostKeys(("a", "b"), "m", generated=False)
    made = HostKeys.from_settings({})
    assert made.generated and len(made.function_keys[0]) >= 32 and made.master_key
    assert made.function_keys != HostKeys.from_settings({}).function_keys


def test_default_level_is_function() -> None:
    assert auth_level_of({"type": "httpTrigger"}) == "function"
    assert auth_level_of({"authLevel": "ANONYMOUS"}) == "anonymous"
