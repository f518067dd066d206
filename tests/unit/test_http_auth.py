"""INFER_AUTH_LEVEL: FUNCTION unless the app checks callers itself; an explicit value wins."""

from __future__ import annotations

import azure.functions as func
import pytest

from functions.http_auth import http_auth_level


@pytest.mark.parametrize(
    ("env", "level"),
    [
        ({}, func.AuthLevel.FUNCTION),
        ({"INFER_API_KEYS": ""}, func.AuthLevel.FUNCTION),
        ({"INFER_API_KEYS": "[]"}, func.AuthLevel.FUNCTION),
        ({"INFER_API_KEYS": "k1"}, func.AuthLevel.ANONYMOUS),
        ({"INFER_JWT": '{"issuer": "https://x"}'}, func.AuthLevel.ANONYMOUS),
        ({"INFER_AUTH_LEVEL": "anonymous"}, func.AuthLevel.ANONYMOUS),
        ({"INFER_AUTH_LEVEL": "FUNCTION", "INFER_API_KEYS": "k1"}, func.AuthLevel.FUNCTION),
        ({"INFER_AUTH_LEVEL": "Admin"}, func.AuthLevel.ADMIN),
    ],
)
def test_level(env: dict[str, str], level: func.AuthLevel) -> None:
    assert http_auth_level(env) is level


def test_bad_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match="INFER_AUTH_LEVEL"):
        http_auth_level({"INFER_AUTH_LEVEL": "public"})
