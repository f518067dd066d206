"""A local OpenID Connect issuer shaped like Entra ID's v2 endpoints, for ``INFER_JWT`` callers.

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: ``issuer``
  (``{base}/{tenant}/v2.0``), ``jwks_uri``, ``token_endpoint``.
- ``GET /{tenant}/discovery/v2.0/keys``: the JWKS (one RSA key, generated at start; a new
  key every start, as after a rotation).
- ``POST /{tenant}/oauth2/v2.0/token`` (form: ``grant_type=client_credentials``,
  ``client_id``, ``client_secret`` or ``client_assertion``, ``scope=<app id uri>/.default``):
  an RS256 access token whose claims mirror an Entra app token (``aud``, ``iss``, ``tid``,
  ``azp``, ``oid``/``sub`` a stable UUID of the client id, ``ver`` 2.0, ``exp``/``iat``/
  ``nbf``). The identity endpoint's faults (``expired``, ``wrong_audience``, ``429``,
  ``500``) apply here too.

``python -m tools.identity token --aud api://infer --client-id my-app`` prints such a token.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import tokens

OID_NAMESPACE = uuid.UUID("6f1f2a4e-55c4-4e3e-9a57-3c3a0a6c1d10")


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def object_id(client_id: str) -> str:
    """The stable object id (``oid``) of a client id: the same every run."""
    return str(uuid.uuid5(OID_NAMESPACE, client_id))


class SigningKey:
    """An RSA key pair with its kid and public JWK."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.private.public_key().public_numbers()
        self.kid = hashlib.sha256(_b64(numbers.n).encode()).hexdigest()[:16]
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": _b64(numbers.n), "e": _b64(numbers.e)}  # fmt: skip

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


def issuer_url(base: str, tenant: str) -> str:
    return f"{base.rstrip('/')}/{tenant}/v2.0"


def app_token(
    key: SigningKey,
    base: str,
    tenant: str,
    client_id: str,
    scope: str,
    *,
    lifetime_s: float,
    exp: float | None = None,
) -> str:
    now = int(time.time())
    oid = object_id(client_id)
    claims = {
        "aud": tokens.audience_of(scope),
        "iss": issuer_url(base, tenant),
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime_s) if exp is None else int(exp),
        "azp": client_id,
        "azpacr": "1",
        "oid": oid,
        "sub": oid,
        "tid": tenant,
        "idtyp": "app",
        "ver": "2.0",
    }
    return key.sign(claims)


def routes(state: Any, next_fault: Callable[[], Any], lifetime_s: float) -> list[Route]:
    key = SigningKey()
    state.oidc_key = key

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def discovery(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = base_of(request)
        return JSONResponse(
            {
                "issuer": issuer_url(base, tenant),
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["token"],
                "subject_types_supported": ["pairwise"],
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            }
        )

    async def keys(request: Request) -> Response:
        state.jwks_requests = getattr(state, "jwks_requests", 0) + 1
        return JSONResponse({"keys": [key.jwk]})

    async def token(request: Request) -> Response:
        # application/x-www-form-urlencoded, parsed without python-multipart
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        tenant = request.path_params["tenant"]

        def oauth_error(status: int, code: str, message: str) -> Response:
            return JSONResponse({"error": code, "error_description": message}, status)

        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "grant_type: client_credentials")
        client_id = str(form.get("client_id") or "")
        if not client_id:
            return oauth_error(400, "invalid_request", "client_id is required")
        if not (form.get("client_secret") or form.get("client_assertion")):
            return oauth_error(401, "invalid_client", "client_secret or client_assertion")
        scope = str(form.get("scope") or "")
        if not scope.endswith("/.default"):
            return oauth_error(400, "invalid_scope", "scope must be '<resource>/.default'")
        fault = next_fault()
        exp: float | None = None
        if fault is not None and fault.type in ("429", "500"):
            return oauth_error(int(fault.type), "temporarily_unavailable", "injected fault")
        if fault is not None and fault.type == "wrong_audience":
            scope = "https://wrong-audience.example.com/.default"
        if fault is not None and fault.type == "expired":
            exp = time.time() - 600
        access = app_token(
            key, base_of(request), tenant, client_id, scope, lifetime_s=lifetime_s, exp=exp
        )
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": int(lifetime_s), "access_token": access}
        )

    return [
        Route("/{tenant}/v2.0/.well-known/openid-configuration", discovery, methods=["GET"]),
        Route("/{tenant}/discovery/v2.0/keys", keys, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
    ]


def fetch_token(url: str, tenant: str, client_id: str, audience: str) -> str:
    """An app token from a running identity server (the ``token`` command)."""
    import httpx2

    scope = audience if audience.endswith("/.default") else audience.rstrip("/") + "/.default"
    r = httpx2.post(
        f"{url.rstrip('/')}/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "local",
            "scope": scope,
        },
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])
