"""Tokens of the local managed-identity endpoint: issue and verify (JWT, HS256).

The identity endpoint signs with a shared key instead of Entra's RSA keys so that gpusim can
verify a token offline with the same key (``IDENTITY_SIGNING_KEY``). The claims mirror an
Entra access token's: ``aud`` is the requested resource (``/.default`` stripped), ``exp``,
``iat``, ``nbf``, ``iss``, ``appid``/``oid`` for the identity.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

#: The development key used when none is configured: not a secret, never use it in Azure.
DEFAULT_SIGNING_KEY = "local-identity-dev-signing-key-not-a-secret"
ISSUER = "https://sts.local.identity/"
SYSTEM_ASSIGNED = "system-assigned"


class TokenError(Exception):
    """A token that is malformed, badly signed, for another audience, or expired."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "invalid" | "audience" | "expired"


def audience_of(resource_or_scope: str) -> str:
    """The audience of a resource or scope: ``https://x/.default`` -> ``https://x``."""
    value = resource_or_scope.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value


def issue(
    key: str,
    resource: str,
    *,
    lifetime_s: float,
    client_id: str | None = None,
    now: float | None = None,
    exp: float | None = None,
) -> tuple[str, int]:
    """(token, expires_on epoch seconds) for ``resource``; ``exp`` overrides the JWT expiry."""
    issued = int(time.time() if now is None else now)
    expires_on = issued + int(lifetime_s)
    identity = client_id or SYSTEM_ASSIGNED
    claims: dict[str, Any] = {
        "aud": audience_of(resource),
        "iss": ISSUER,
        "iat": issued,
        "nbf": issued,
        "exp": expires_on if exp is None else int(exp),
        "appid": identity,
        "oid": identity,
        "sub": identity,
        "idtyp": "app",
    }
    return jwt.encode(claims, key, algorithm="HS256"), expires_on


def verify(
    token: str, key: str, audience: str, *, now: float | None = None, leeway_s: float = 0.0
) -> dict[str, Any]:
    """The token's claims when it is signed with ``key``, for ``audience`` and unexpired.

    Raises :class:`TokenError` whose ``reason`` says which check failed.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            options={"verify_aud": False, "verify_exp": False, "require": ["exp", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError("invalid", f"invalid token: {type(exc).__name__}") from None
    wanted = audience_of(audience)
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if wanted not in auds:
        raise TokenError("audience", f"token audience {aud!r} is not {wanted!r}")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or current > exp + leeway_s:
        raise TokenError("expired", "token is expired")
    return claims
