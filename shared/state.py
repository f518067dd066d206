"""Shared state (limits counters, the cache) in Redis, when ``INFER_STATE_URL`` is set.

One ``redis.asyncio.Redis`` per process and event loop, built on first use (never at import)
and reused by warm invocations; ``redis`` is imported only then, so a function that uses no
shared state never loads it. Sign-in uses the function's own identity; no password lives in a
setting:

- ``INFER_STATE_AUTH=entra`` (Azure Managed Redis / Azure Cache for Redis with Entra ID): the
  managed identity's token for ``https://redis.azure.com/.default`` is the password, its
  object id (``oid`` claim) the user name (or ``INFER_STATE_USER``). A token is valid for
  hours; the client is rebuilt (a new pool) 4 minutes before the token expires, so no
  connection outlives its token.
- ``INFER_STATE_AUTH=aws_iam`` (ElastiCache / MemoryDB IAM auth): the password is a SigV4
  presigned ``connect`` request for the cache's user id (``INFER_STATE_USER`` or the URL's
  user name), signed with the function's role. A token opens connections for 15 minutes, so
  a fresh one is signed every 10; ElastiCache closes IAM connections after 12 hours and the
  pool then reconnects with the current token.
- ``INFER_STATE_AUTH=none`` (default): no AUTH, or a password read from the setting NAMED by
  ``INFER_STATE_PASSWORD_SETTING`` (e.g. a Key Vault reference), never from the URL.

The URL's query may carry the same choices (``?auth=entra&user=…``). Every Redis call runs
under :func:`op_timeout`: at most ``INFER_STATE_TIMEOUT_S`` and never past the invocation's
deadline. A failed call is reported with :func:`note_failure` (logged at most once per
``_LOG_EVERY_S``, counted in :data:`failures`) and Redis is then left alone for
``INFER_STATE_COOLDOWN_S``, by that component only (limits, cache, capacity: each its own
circuit, so a slow cache write never turns the limits off): limits fall back to this
instance's own counters and the cache is skipped meanwhile, so a Redis outage costs a
request at most one timeout, and a request never fails because the state store did.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from pydantic import Field, field_validator

from shared.errors import ConfigError
from shared.lifecycle import Singleton, on_reset
from shared.settings import CachedSettings, EnvSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.context import Context

log = logging.getLogger("shared.state")

REDIS_SCOPE = "https://redis.azure.com/.default"
#: ElastiCache and MemoryDB accept an IAM token for 15 minutes; sign a new one well before.
AWS_TOKEN_REFRESH_S = 600.0
AWS_TOKEN_EXPIRES_S = 900
#: Rebuild an Entra client this long before its token expires: less than the token source's
#: own refresh margin (5 min), so the rebuilt pool signs in with a fresh token.
ENTRA_ROTATE_MARGIN_S = 240.0
_LOG_EVERY_S = 30.0

StateAuth = Literal["none", "entra", "aws_iam"]
T = TypeVar("T")

#: Failed state-store calls per component ("limits", "cache", ...): read by telemetry.
failures: Counter[str] = Counter()


class StateSettings(EnvSettings):
    """``INFER_STATE_*`` settings (docs/controls.md has the table)."""

    env_prefix: ClassVar[str] = "INFER_STATE_"

    url: str | None = None
    auth: StateAuth | None = None
    user: str | None = None
    client_id: str | None = None
    scope: str = REDIS_SCOPE
    password_setting: str | None = None
    aws_cache_name: str | None = None
    aws_region: str | None = None
    aws_service: Literal["elasticache", "memorydb"] = "elasticache"
    aws_serverless: bool = False
    timeout_s: float = Field(default=0.5, gt=0, le=30)
    cooldown_s: float = Field(default=2.0, ge=0, le=300)
    key_prefix: str = "infer:"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("must be a redis:// or rediss:// URL")
        if parts.password:
            raise ValueError(
                "must not carry a password: sign in with INFER_STATE_AUTH=entra or aws_iam, "
                "or name the setting that holds it in INFER_STATE_PASSWORD_SETTING"
            )
        return value


_settings = CachedSettings(StateSettings)
get_state_settings = _settings.get


def configured() -> bool:
    """Whether shared state is configured (reads the setting only; imports nothing)."""
    return bool(get_state_settings().url)


class ConnectionPlan:
    """What to connect to and how to sign in, from the settings and the URL's query."""

    def __init__(self, settings: StateSettings) -> None:
        if not settings.url:
            raise ConfigError("INFER_STATE_URL is not set", param="INFER_STATE_URL")
        parts = urlsplit(settings.url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        auth = settings.auth or query.pop("auth", None) or "none"
        query.pop("auth", None)
        if auth not in ("none", "entra", "aws_iam"):
            raise ConfigError(
                f"INFER_STATE_AUTH: unknown {auth!r}; expected none, entra or aws_iam",
                param="INFER_STATE_AUTH",
            )
        self.auth: StateAuth = auth  # type: ignore[assignment]
        self.user = settings.user or query.pop("user", None) or unquote(parts.username or "")
        query.pop("user", None)
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "rediss"
        self.client_id = settings.client_id or query.pop("client_id", None)
        query.pop("client_id", None)
        self.cache_name = settings.aws_cache_name or query.pop("cache_name", None)
        query.pop("cache_name", None)
        self.settings = settings
        netloc = self.host if parts.port is None else f"{self.host}:{parts.port}"
        # the URL handed to redis-py carries neither credentials nor our own options
        self.url = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
        if self.auth == "aws_iam":
            if not self.user:
                raise ConfigError(
                    "INFER_STATE_AUTH=aws_iam needs the cache's user id: INFER_STATE_USER "
                    "or the URL's user name (rediss://USER@host:6379)",
                    param="INFER_STATE_USER",
                )
            if not self.cache_name:
                raise ConfigError(
                    "INFER_STATE_AUTH=aws_iam needs INFER_STATE_AWS_CACHE_NAME (the "
                    "replication group, serverless cache or MemoryDB cluster name)",
                    param="INFER_STATE_AWS_CACHE_NAME",
                )


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (only to read our own token's ``oid``)."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class EntraCredentials:
    """(object id, token) from the process's managed identity for Azure Managed Redis."""

    def __init__(self, client_id: str | None, scope: str, user: str | None) -> None:
        from shared.backends.azure_auth import token_source

        self._tokens = token_source(client_id, scope)
        self._user = user

    async def credentials(self) -> tuple[str, str, float]:
        token = await self._tokens.token()
        claims = _jwt_claims(token)
        user = self._user or str(claims.get("oid") or claims.get("sub") or "")
        if not user:
            raise ConfigError(
                "INFER_STATE_AUTH=entra: the token has no 'oid' claim; set INFER_STATE_USER "
                "to the identity's object id",
                param="INFER_STATE_USER",
            )
        expires = float(claims.get("exp") or time.time() + 3600)
        return user, token, expires


class AwsIamCredentials:
    """A SigV4 presigned ``connect`` token for ElastiCache / MemoryDB IAM auth."""

    def __init__(
        self,
        user: str,
        cache_name: str,
        *,
        region: str | None,
        service: str,
        serverless: bool,
        clock: Any = time.time,
    ) -> None:
        self.user = user
        self.cache_name = cache_name
        self.region = region
        self.service = service
        self.serverless = serverless
        self._clock = clock
        self._token: str | None = None
        self._signed_at = 0.0
        self._lock = threading.Lock()

    def _sign(self) -> str:
        import botocore.session
        from botocore.auth import SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        session = botocore.session.get_session()
        creds = session.get_credentials()
        if creds is None:
            raise ConfigError("INFER_STATE_AUTH=aws_iam: no AWS credentials in this process")
        region = self.region or session.get_config_variable("region")
        if not region:
            raise ConfigError(
                "INFER_STATE_AUTH=aws_iam needs a region: INFER_STATE_AWS_REGION or AWS_REGION",
                param="INFER_STATE_AWS_REGION",
            )
        params = {"Action": "connect", "User": self.user}
        if self.serverless:
            params["ResourceType"] = "ServerlessCache"
        url = f"https://{self.cache_name}/?{urlencode(params)}"
        request = AWSRequest(method="GET", url=url)
        SigV4QueryAuth(
            creds.get_frozen_credentials(), self.service, region, expires=AWS_TOKEN_EXPIRES_S
        ).add_auth(request)
        return str(request.url).removeprefix("https://")

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._signed_at >= AWS_TOKEN_REFRESH_S:
                self._token = self._sign()
                self._signed_at = now
            return self._token

    async def credentials(self) -> tuple[str, str, float]:
        token = self.token()
        return self.user, token, float("inf")


def _credential_provider(source: Any) -> Any:
    """A redis-py credential provider asking ``source`` on every new connection."""
    from redis.credentials import CredentialProvider

    class Provider(CredentialProvider):
        def get_credentials(self) -> tuple[str, str]:  # pragma: no cover - async client only
            raise RuntimeError("shared.state uses the asyncio client")

        async def get_credentials_async(self) -> tuple[str, str]:
            user, token, _ = await source.credentials()
            return user, token

    return Provider()


class StateClient:
    """The process's Redis client (one per event loop), rotated before an Entra token expires."""

    def __init__(self, settings: StateSettings) -> None:
        self.plan = ConnectionPlan(settings)
        self.settings = settings
        self._source: Any = None
        if self.plan.auth == "entra":
            self._source = EntraCredentials(self.plan.client_id, settings.scope, self.plan.user)
        elif self.plan.auth == "aws_iam":
            assert self.plan.cache_name is not None  # checked by ConnectionPlan
            self._source = AwsIamCredentials(
                self.plan.user,
                self.plan.cache_name,
                region=settings.aws_region or os.environ.get("AWS_REGION"),
                service=settings.aws_service,
                serverless=settings.aws_serverless,
            )
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Redis, float]] = {}
        #: component -> when it may use Redis again (each component its own circuit: a
        #: slow cache write never turns the limits off)
        self.down_until: dict[str, float] = {}
        self._building: dict[int, asyncio.Lock] = {}

    def _build(self) -> Redis:
        from redis.asyncio import Redis

        kwargs: dict[str, Any] = {
            "socket_timeout": self.settings.timeout_s,
            "socket_connect_timeout": self.settings.timeout_s,
            "retry_on_timeout": False,
            "health_check_interval": 30,
        }
        if self._source is not None:
            kwargs["credential_provider"] = _credential_provider(self._source)
        elif self.settings.password_setting:
            password = os.environ.get(self.settings.password_setting)
            if not password:
                raise ConfigError(
                    f"INFER_STATE_PASSWORD_SETTING names {self.settings.password_setting!r}, "
                    "which is not set",
                    param="INFER_STATE_PASSWORD_SETTING",
                )
            kwargs["password"] = password
            if self.plan.user:
                kwargs["username"] = self.plan.user
        client: Redis = Redis.from_url(self.plan.url, **kwargs)
        return client

    def _current(self, running: asyncio.AbstractEventLoop) -> Redis | None:
        entry = self._clients.get(id(running))
        if entry is not None and entry[0] is running and time.time() < entry[2]:
            return entry[1]
        return None

    async def client(self) -> Redis:
        running = asyncio.get_running_loop()
        found = self._current(running)
        if found is not None:
            return found
        # one rebuild (one token refresh) per loop however many requests arrive at once
        lock = self._building.get(id(running))
        if lock is None or getattr(lock, "_loop", running) is not running:
            lock = self._building[id(running)] = asyncio.Lock()
        async with lock:
            found = self._current(running)
            if found is not None:
                return found
            return await self._rebuild(running)

    async def _rebuild(self, running: asyncio.AbstractEventLoop) -> Redis:
        loop = id(running)
        entry = self._clients.get(loop)
        if entry is not None and entry[0] is not running:
            entry = None  # an id reused by a new loop
        now = time.time()
        # a client belongs to the loop that built it: forget those of loops that are gone
        for key in [k for k, (lp, _, _) in self._clients.items() if lp.is_closed()]:
            del self._clients[key]
        rotate_at = float("inf")
        if isinstance(self._source, EntraCredentials):
            _, _, expires = await self._source.credentials()
            rotate_at = expires - ENTRA_ROTATE_MARGIN_S
            if rotate_at <= now:  # a short-lived token: keep it until half its life is left
                rotate_at = now + max(1.0, (expires - now) / 2)
        client = self._build()
        self._clients[loop] = (running, client, rotate_at)
        if entry is not None:  # connections of the old pool used the old token: let them go
            task = running.create_task(_close_later(entry[1]))
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        return client


_closing: set[asyncio.Task[None]] = set()


async def _close_later(client: Redis) -> None:
    await asyncio.sleep(5.0)
    with contextlib.suppress(Exception):  # closing an old pool is best effort
        await client.aclose()


_state = Singleton(lambda: StateClient(get_state_settings()))
_last_log: dict[str, float] = {}
on_reset(failures.clear)
on_reset(_last_log.clear)


def state() -> StateClient:
    """The process's state client, built on first use."""
    return _state.get()


async def get_redis() -> Redis:
    """The process's ``redis.asyncio.Redis`` for this event loop (``INFER_STATE_URL`` set)."""
    return await state().client()


def key(*parts: str) -> str:
    """A key in the project's namespace (``INFER_STATE_KEY_PREFIX``)."""
    return get_state_settings().key_prefix + ":".join(parts)


def available(component: str = "cache") -> bool:
    """False while ``component``'s use of Redis is cooling down after one of its calls
    failed (the limits fall back, the cache is skipped); each component has its own."""
    s = _state.peek()
    return s is None or time.monotonic() >= s.down_until.get(component, 0.0)


def op_timeout(ctx: Context | None) -> float:
    """Seconds one Redis call may take: ``INFER_STATE_TIMEOUT_S``, never past the deadline."""
    limit = get_state_settings().timeout_s
    if ctx is not None:
        limit = min(limit, max(ctx.remaining(), 0.0))
    return max(limit, 0.001)


def note_failure(component: str, exc: BaseException) -> None:
    """Count and log (rate-limited) a failed state call; start the cool-down."""
    failures[component] += 1
    s = _state.peek()
    if s is not None:
        s.down_until[component] = time.monotonic() + s.settings.cooldown_s
    now = time.monotonic()
    if now - _last_log.get(component, -_LOG_EVERY_S) >= _LOG_EVERY_S:
        _last_log[component] = now
        log.warning(
            "state store unavailable for %s (%s: %s); %s meanwhile (failures so far: %d)",
            component,
            type(exc).__name__,
            str(exc)[:200],
            {
                "limits": "limits fall back to this instance's counters",
                "capacity": "capacity counted per instance",
            }.get(component, "skipping"),
            failures[component],
        )


class StateUnavailable(Exception):
    """Redis did not answer (or is cooling down): the caller fails open or skips."""


async def run(component: str, ctx: Context | None, fn: Callable[[Redis], Awaitable[T]]) -> T:
    """``fn(redis)`` within :func:`op_timeout`; any failure is noted and raised as
    :class:`StateUnavailable` (never a Redis or socket error)."""
    if not available(component):
        raise StateUnavailable("state store cooling down after a failure")
    try:
        # built (redis imported, a token fetched) within the deadline, not the call's timeout
        async with asyncio.timeout(max(ctx.remaining(), 0.001) if ctx is not None else 30.0):
            redis = await get_redis()
        async with asyncio.timeout(op_timeout(ctx)):
            return await fn(redis)
    except ConfigError:
        raise
    except Exception as exc:  # redis errors, OSError, TimeoutError: all mean "not now"
        note_failure(component, exc)
        raise StateUnavailable(f"{type(exc).__name__}: {exc}") from exc
