"""The App Service managed-identity protocol, served locally (``IDENTITY_ENDPOINT``).

- ``GET /msi/token?api-version=2019-08-01&resource=<resource>[&client_id=<id>]`` with header
  ``X-IDENTITY-HEADER: <IDENTITY_HEADER>``: ``{"access_token", "expires_on", "resource",
  "token_type", "client_id"}`` (``expires_on`` in epoch seconds, as a string, like Azure).
  A missing header is a 400, a wrong one a 401, a missing resource or api-version a 400.
- ``GET /admin/stats``: token requests counted in total, per resource, per status.
  ``POST /admin/reset`` zeroes them.
- ``POST /admin/faults`` ``{"type": "429"|"500"|"expired"|"wrong_audience", "count"?: n,
  "retry_after"?: s}`` fails (or spoils) the next ``count`` token requests: ``expired`` issues
  a token whose JWT is already expired while ``expires_on`` looks fine (a revoked or skewed
  token), ``wrong_audience`` one for another audience. ``DELETE`` clears, ``GET`` shows.
- ``GET /health``.
- An OpenID Connect issuer shaped like Entra ID's (``tools.identity.oidc``): discovery, JWKS
  and RS256 app tokens for ``INFER_JWT`` callers, under ``/{tenant}/...``.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import tokens

FAULT_TYPES = ("429", "500", "expired", "wrong_audience")
API_VERSIONS = ("2019-08-01", "2017-09-01")
TOKEN_PATHS = ("/msi/token", "/msi/token/", "/MSI/token", "/MSI/token/")


@dataclass(frozen=True)
class IdentityConfig:
    host: str = "127.0.0.1"
    port: int = 8082
    identity_header: str = "local-identity-header"
    signing_key: str = tokens.DEFAULT_SIGNING_KEY
    lifetime_s: float = 3600.0
    log_level: str = "warning"


@dataclass
class _Fault:
    type: str
    count: int
    retry_after: float


@dataclass
class IdentityState:
    config: IdentityConfig
    requests: int = 0
    issued: int = 0
    by_resource: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    faults: deque[_Fault] = field(default_factory=deque)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "tokens_issued": self.issued,
            "by_resource": dict(self.by_resource),
            "by_status": dict(self.by_status),
            "faults": [vars(f) for f in self.faults],
        }

    def reset(self) -> None:
        self.requests = self.issued = 0
        self.by_resource.clear()
        self.by_status.clear()

    def next_fault(self) -> _Fault | None:
        while self.faults and self.faults[0].count == 0:
            self.faults.popleft()
        if not self.faults:
            return None
        head = self.faults[0]
        if head.count > 0:
            head.count -= 1
        return head


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"statusCode": status, "message": message}, status, headers=headers)


def build_app(config: IdentityConfig | None = None) -> Starlette:
    state = IdentityState(config or IdentityConfig())

    async def token(request: Request) -> Response:
        state.requests += 1
        response = _token(request)
        state.by_status[str(response.status_code)] += 1
        return response

    def _token(request: Request) -> Response:
        cfg = state.config
        given = request.headers.get("x-identity-header")
        if given is None:
            return _error(400, "X-IDENTITY-HEADER header is required")
        if not hmac.compare_digest(given.encode(), cfg.identity_header.encode()):
            return _error(401, "X-IDENTITY-HEADER does not match IDENTITY_HEADER")
        if request.query_params.get("api-version") not in API_VERSIONS:
            return _error(400, f"api-version must be one of {', '.join(API_VERSIONS)}")
        resource = request.query_params.get("resource", "").strip()
        if not resource:
            return _error(400, "resource query parameter is required")
        client_id = request.query_params.get("client_id") or None
        state.by_resource[tokens.audience_of(resource)] += 1
        fault = state.next_fault()
        exp: float | None = None
        if fault is not None and fault.type in ("429", "500"):
            headers = {"Retry-After": str(max(0, round(fault.retry_after)))}
            return _error(int(fault.type), f"injected {fault.type} by tools.identity", headers)
        if fault is not None and fault.type == "wrong_audience":
            resource = "https://wrong-audience.example.com"
        if fault is not None and fault.type == "expired":
            exp = time.time() - 60
        access_token, expires_on = tokens.issue(
            cfg.signing_key, resource, lifetime_s=cfg.lifetime_s, client_id=client_id, exp=exp
        )
        state.issued += 1
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_on": str(expires_on),
            "resource": tokens.audience_of(request.query_params["resource"]),
            "token_type": "Bearer",
        }
        if client_id:
            body["client_id"] = client_id
        return JSONResponse(body)

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse(state.stats())

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
        elif request.method == "POST":
            try:
                body = json.loads(await request.body())
                items = body if isinstance(body, list) else [body]
                parsed = [_parse_fault(item) for item in items]
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": {"message": str(exc)}}, 400)
            state.faults.extend(parsed)
        return JSONResponse({"faults": [vars(f) for f in state.faults]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    from .oidc import routes as oidc_routes

    routes = [Route(p, token, methods=["GET"]) for p in TOKEN_PATHS]
    routes += oidc_routes(state, state.next_fault, state.config.lifetime_s)
    routes += [
        Route("/admin/stats", stats, methods=["GET"]),
        Route("/admin/reset", reset, methods=["POST"]),
        Route("/admin/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.identity = state
    return app


def _parse_fault(item: Any) -> _Fault:
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object or a list of objects")
    kind = str(item.get("type", ""))
    if kind not in FAULT_TYPES:
        raise ValueError(f"unknown fault type {kind!r}; known: {', '.join(FAULT_TYPES)}")
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count == 0 or count < -1:
        raise ValueError("count must be a positive integer or -1 (until cleared)")
    retry_after = float(item.get("retry_after", 1.0))
    return _Fault(kind, count, retry_after)
