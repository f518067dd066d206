"""Who is calling: a stable caller id for every request (limits, cache scope, jobs, telemetry).

- ``INFER_API_KEYS``: a comma list or JSON list of keys. The caller id is ``key:`` + the
  key's id. An entry is a bare key (its id is ``key-`` + the first 12 hex digits of its
  SHA-256, so reordering or adding keys never moves an id), ``{"id", "key"}``,
  ``{"id", "key_setting"}`` (the key lives in another setting, e.g. a Key Vault
  reference) or ``{"id", "sha256"}`` (only the key's digest is deployed). Keys are held
  as ``SecretStr``; a presented key is hashed once and compared with every entry's digest
  in constant time.
- ``INFER_JWT``: Entra ID / OIDC bearer tokens (an app calling with its own managed
  identity): ``{"issuer", "audience", "jwks_url"?, "caller_claim"?, "algorithms"?}`` or a list
  of them. The signature is checked against the issuer's JWKS (discovered from
  ``{issuer}/.well-known/openid-configuration`` when ``jwks_url`` is absent), fetched once and
  cached; an unknown ``kid`` refetches it, at most once per ``JWKS_REFETCH_S``. Issuer,
  audience and expiry are checked, then ``required_claims`` (e.g. ``tid``, ``roles``) and
  ``allowed_callers``. The caller id is ``jwt:<issuer>:`` + the ``caller_claim`` (default
  ``oid``, then ``sub``, ``azp``, ``appid``). PyJWT is imported only when ``INFER_JWT`` is
  set.
- An AWS Function URL with ``AuthType: AWS_IAM``: Lambda has verified the SigV4 signature;
  the caller id is the IAM principal from ``requestContext.authorizer.iam`` (an assumed
  role's session name is dropped, so every session of a role is one caller).
- Nothing configured: every request is the caller :data:`ANONYMOUS` (the platform's own auth
  applies: Azure function keys, Lambda IAM).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from shared.errors import AuthenticationFailed, ConfigError
from shared.lifecycle import Singleton
from shared.principal import ANONYMOUS, KEY_PREFIX, iam_principal
from shared.settings import CachedSettings, EnvSettings, NoDecode, require_unique

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("shared.callers")


def aliases(caller: str) -> set[str]:
    """The names a rule or a stored record may use for ``caller``: its id, and for a key
    caller the key's bare id too (the unprefixed names configured before ids were
    namespaced). A token's or an IAM principal's id has no unprefixed alias."""
    if caller.startswith(KEY_PREFIX):
        return {caller, caller[len(KEY_PREFIX) :]}
    return {caller}


def _claim_matches(value: Any, wanted: str | list[str]) -> bool:
    allowed = [wanted] if isinstance(wanted, str) else wanted
    if isinstance(value, list):
        return any(v in allowed for v in value if isinstance(v, str))
    return isinstance(value, str) and value in allowed


#: An unknown ``kid`` refetches the JWKS at most this often (key rotation, not a DoS lever).
JWKS_REFETCH_S = 60.0
DEFAULT_CLAIMS = ("oid", "sub", "azp", "appid")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def key_id(key: str) -> str:
    """The stable id of a bare key: ``key-`` + 12 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKey(BaseModel):
    """One inbound key (``INFER_API_KEYS`` entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    key: SecretStr | None = None
    key_setting: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        given = [n for n in ("key", "key_setting", "sha256") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"key {self.id!r}: give exactly one of key, key_setting, sha256")
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise ValueError(f"key {self.id!r}: sha256 must be 64 hex digits")
        return self

    def digest(self) -> bytes:
        """SHA-256 of the key (read from ``key_setting`` when that is how it is given)."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        if self.key_setting is not None:
            value = os.environ.get(self.key_setting)
            if not value:
                raise ConfigError(
                    f"INFER_API_KEYS entry {self.id!r}: setting {self.key_setting!r} named "
                    "by 'key_setting' is not set",
                    param="key_setting",
                )
            return hashlib.sha256(value.encode()).digest()
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).digest()


def parse_api_keys(value: Any) -> Any:
    """``INFER_API_KEYS`` text -> list of :class:`ApiKey` inputs (bare keys get their id).

    A setting that is not blank must hold a key: ``" , "`` or ``"[ ]"`` would otherwise turn
    the app's check off while still turning the host's off too (``functions/http_auth.py``
    sees a setting), so it is a configuration error, as is a Key Vault reference App Service
    left unresolved (its literal text would become a key anyone can read in the portal)."""
    given = isinstance(value, str) and bool(value.strip())
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [k for k in text.split(",")]
    if not isinstance(value, list):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, str):
            item = item.strip()
            if item.startswith("@Microsoft.KeyVault("):
                raise ValueError(
                    "holds an unresolved Key Vault reference: grant the app's identity "
                    "access to the secret (Key Vault Secrets User) or fix the reference"
                )
            if item:
                out.append({"id": key_id(item), "key": item})
        else:
            out.append(item)
    if given and not out:
        raise ValueError("is set but holds no key: remove it, or give at least one key")
    return out


class JwtIssuer(BaseModel):
    """One trusted token issuer (``INFER_JWT`` entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audience: str | list[str]
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    caller_claim: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    leeway_s: float = Field(default=60.0, ge=0, le=600)
    #: Claims a token must carry: a value it must equal, or a list of which it must equal
    #: one (a list-valued claim such as ``roles`` must contain one), e.g.
    #: ``{"tid": "<tenant id>", "roles": ["Inference.Call"]}``. A shared issuer (Entra ID)
    #: signs tokens for every app of every tenant: without this, any of them is a caller.
    required_claims: dict[str, str | list[str]] = Field(default_factory=dict)
    #: The caller claim's values allowed (an app's object ids); None: any.
    allowed_callers: list[str] | None = None

    @field_validator("algorithms")
    @classmethod
    def _no_symmetric(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a.upper().startswith("HS") or a.lower() == "none"]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed: use asymmetric keys (RS256)")
        return value


class CallerSettings(EnvSettings):
    env_prefix: ClassVar[str] = "INFER_"

    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)
    jwt: Annotated[list[JwtIssuer], NoDecode] = Field(default_factory=list)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return parse_api_keys(value)

    @field_validator("api_keys")
    @classmethod
    def _unique_ids(cls, value: list[ApiKey]) -> list[ApiKey]:
        require_unique([k.id for k in value], "key ids")
        return value

    @field_validator("jwt", mode="before")
    @classmethod
    def _issuers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else []
        return [value] if isinstance(value, dict) else value


_settings = CachedSettings(CallerSettings)
get_caller_settings = _settings.get


class KeyRing:
    """Every key's digest; a presented key is hashed once and compared with all of them."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.entries = [(k.id, k.digest()) for k in keys]

    def match(self, given: str) -> str | None:
        digest = hashlib.sha256(given.encode()).digest()
        found: str | None = None
        for ident, expected in self.entries:  # no early exit: constant time in the match
            if hmac.compare_digest(digest, expected) and found is None:
                found = ident
        return found


class Jwks:
    """An issuer's signing keys: fetched once, cached, refetched (rate-limited) on a new kid."""

    def __init__(self, issuer: JwtIssuer) -> None:
        self.issuer = issuer
        self.keys: dict[str, Any] = {}
        self.fetched_at = -JWKS_REFETCH_S
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str, wait_s: float) -> Any:
        from shared.backends.http import get_client

        response = await get_client().get(url, timeout=wait_s)
        response.raise_for_status()
        return response.json()

    async def _fetch(self, wait_s: float) -> None:
        import jwt

        url = self.issuer.jwks_url
        if url is None:
            base = self.issuer.issuer.rstrip("/")
            meta = await self._get_json(base + "/.well-known/openid-configuration", wait_s)
            url = str(meta["jwks_uri"])
        data = await self._get_json(url, wait_s)
        keys: dict[str, Any] = {}
        for jwk in data.get("keys", []):
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue  # a key type or algorithm we do not use
            keys[str(jwk.get("kid", ""))] = key
        self.keys = keys
        self.fetches += 1

    async def key(self, kid: str, wait_s: float) -> Any:
        found = self.keys.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self.keys.get(kid)
            if found is None and time.monotonic() - self.fetched_at >= JWKS_REFETCH_S:
                self.fetched_at = time.monotonic()
                try:
                    await self._fetch(wait_s)
                except Exception as exc:
                    log.warning(
                        "JWKS of %s could not be fetched: %s: %s",
                        self.issuer.issuer,
                        type(exc).__name__,
                        str(exc)[:200],
                    )
                    self.fetched_at = time.monotonic() - JWKS_REFETCH_S + 5.0  # retry soon
                    raise AuthenticationFailed(
                        "the token issuer's signing keys are unavailable; try again"
                    ) from None
                found = self.keys.get(kid)
        return found


class Authenticator:
    """The process's inbound auth, built from the settings on first use."""

    def __init__(self, settings: CallerSettings) -> None:
        self.keys = KeyRing(settings.api_keys) if settings.api_keys else None
        self.issuers = [Jwks(i) for i in settings.jwt]

    @property
    def configured(self) -> bool:
        return self.keys is not None or bool(self.issuers)

    async def caller(self, request: Request, wait_s: float = 5.0) -> str:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        given = given or request.headers.get("api-key", "").strip()
        if given and self.configured:
            if self.keys is not None:
                ident = self.keys.match(given)
                if ident is not None:
                    return KEY_PREFIX + ident
            if self.issuers and given.count(".") == 2:
                return await self._verify_jwt(given, wait_s)
            raise AuthenticationFailed(_HOW)
        principal = iam_principal(request)
        if principal is not None:
            return principal
        if self.configured:
            raise AuthenticationFailed(_HOW)
        return ANONYMOUS

    async def _verify_jwt(self, token: str, wait_s: float) -> str:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationFailed("invalid bearer token") from None
        iss = unverified.get("iss")
        source = next((j for j in self.issuers if j.issuer.issuer == iss), None)
        if source is None:
            raise AuthenticationFailed("bearer token from an untrusted issuer")
        conf = source.issuer
        key = await source.key(str(header.get("kid", "")), wait_s)
        if key is None:
            raise AuthenticationFailed("bearer token signed with an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=conf.algorithms,
                audience=conf.audience,
                issuer=conf.issuer,
                leeway=conf.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("bearer token is expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("bearer token is for another audience") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid bearer token ({type(exc).__name__})") from None
        for claim, wanted in conf.required_claims.items():
            if not _claim_matches(claims.get(claim), wanted):
                raise AuthenticationFailed(f"bearer token lacks the required claim {claim!r}")
        names = (conf.caller_claim,) if conf.caller_claim else DEFAULT_CLAIMS
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                if conf.allowed_callers is not None and value not in conf.allowed_callers:
                    raise AuthenticationFailed("bearer token's subject is not an allowed caller")
                return f"jwt:{conf.issuer}:{value}"
        raise AuthenticationFailed(f"bearer token has no caller claim ({', '.join(names)})")


_HOW = "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'api-key: <key>'"


_auth = Singleton(lambda: Authenticator(get_caller_settings()))


def get_authenticator() -> Authenticator:
    return _auth.get()


def auth_configured() -> bool:
    """Whether inbound keys or tokens are configured (callers see only their own jobs)."""
    return get_authenticator().configured
