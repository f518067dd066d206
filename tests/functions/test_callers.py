"""Callers: stable key ids, Entra-style JWT callers (tokens from tools/identity), AWS IAM.

The chat function's app runs in-process against gpusim; JWT keys come from the identity
server's OIDC issuer over HTTP, as from Entra ID.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from functions.chat.app import app as chat_app
from shared.callers import get_authenticator, get_caller_settings, key_id
from shared.lifecycle import reset_all
from shared.principal import ANONYMOUS
from tests.fixtures.identity import Server
from tests.fixtures.procs import PYTHON, ROOT
from tools.identity.oidc import fetch_token, object_id

MSG = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]}
AUD = "api://serverless-inference"


async def post(headers: dict[str, str] | None = None, **scope: Any) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=chat_app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.post("/v1/chat/completions", json=MSG, headers=headers or {})


@pytest.fixture
def backend(clean_env: pytest.MonkeyPatch, gpusim: Any) -> pytest.MonkeyPatch:
    clean_env.setenv(
        "INFER_BACKENDS",
        json.dumps([{"name": "sim", "kind": "openai", "base_url": gpusim.v1}]),
    )
    reset_all()
    return clean_env


def test_bare_key_ids_are_stable_under_reordering(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INFER_API_KEYS", "alpha,beta")
    reset_all()
    first = {k.key.get_secret_value(): k.id for k in get_caller_settings().api_keys}  # type: ignore[union-attr]
    clean_env.setenv("INFER_API_KEYS", "gamma,beta,alpha")
    reset_all()
    again = {k.key.get_secret_value(): k.id for k in get_caller_settings().api_keys}  # type: ignore[union-attr]
    assert first["alpha"] == again["alpha"] == "key-" + hashlib.sha256(b"alpha").hexdigest()[:12]
    assert first["beta"] == again["beta"]


async def test_key_entries_with_ids_setting_and_digest(backend: pytest.MonkeyPatch) -> None:
    backend.setenv("TEAM_B_KEY", "b-secret")
    backend.setenv(
        "INFER_API_KEYS",
        json.dumps(
            [
                {"id": "team-a", "key": "a-secret"},
                {"id": "team-b", "key_setting": "TEAM_B_KEY"},
                {"id": "team-c", "sha256": hashlib.sha256(b"c-secret").hexdigest()},
                "bare-secret",
            ]
        ),
    )
    reset_all()
    auth = get_authenticator()
    assert auth.keys is not None
    assert auth.keys.match("a-secret") == "team-a"
    assert auth.keys.match("b-secret") == "team-b"
    assert auth.keys.match("c-secret") == "team-c"
    assert auth.keys.match("bare-secret") == key_id("bare-secret")
    assert auth.keys.match("nope") is None
    assert (await post({"authorization": "Bearer c-secret"})).status_code == 200
    assert (await post({"api-key": "b-secret"})).status_code == 200
    assert (await post({"authorization": "Bearer wrong"})).status_code == 401
    assert (await post()).status_code == 401


def test_nothing_configured_is_the_anonymous_caller(clean_env: pytest.MonkeyPatch) -> None:
    assert not get_authenticator().configured
    assert ANONYMOUS == "anonymous"


@pytest.fixture
def jwt_env(backend: pytest.MonkeyPatch, identity_server: Server) -> str:
    issuer = f"{identity_server.url}/tenant-1/v2.0"
    backend.setenv("INFER_JWT", json.dumps({"issuer": issuer, "audience": AUD}))
    reset_all()
    return issuer


async def test_entra_style_jwt_caller_is_authenticated(
    jwt_env: str, identity_server: Server
) -> None:
    token = fetch_token(identity_server.url, "tenant-1", "app-one", AUD)
    r = await post({"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    caller = await get_authenticator().caller(_request(token))
    assert caller == f"jwt:{jwt_env}:{object_id('app-one')}"  # the issuer's oid claim
    # the JWKS was fetched once (discovery + keys) and is reused
    source = get_authenticator().issuers[0]
    for _ in range(3):
        assert (await post({"authorization": f"Bearer {token}"})).status_code == 200
    assert source.fetches == 1


def _request(token: str) -> Any:
    from starlette.requests import Request

    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "headers": headers, "method": "POST", "path": "/"})


async def test_wrong_audience_issuer_expiry_or_key_each_401(
    jwt_env: str, identity_server: Server
) -> None:
    wrong_aud = fetch_token(identity_server.url, "tenant-1", "app-one", "api://someone-else")
    other_issuer = fetch_token(identity_server.url, "tenant-2", "app-one", AUD)
    identity_server.faults({"type": "expired"})
    expired = fetch_token(identity_server.url, "tenant-1", "app-one", AUD)
    good = fetch_token(identity_server.url, "tenant-1", "app-one", AUD)
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    another = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    same_kid = jwt.encode(claims, another, algorithm="RS256", headers={"kid": kid})
    new_kid = jwt.encode(claims, another, algorithm="RS256", headers={"kid": "rotated"})
    hs = jwt.encode(claims, "a-shared-secret-of-thirty-two-bytes!!", algorithm="HS256")
    for token, why in [
        (wrong_aud, "another audience"),
        (other_issuer, "untrusted issuer"),
        (expired, "expired"),
        (same_kid, "invalid"),
        (new_kid, "unknown key"),
        (hs, "unknown key"),
        ("not.a.jwt", "invalid"),
    ]:
        r = await post({"authorization": f"Bearer {token}"})
        assert r.status_code == 401, (why, r.text)
        assert why in r.json()["error"]["message"]
    assert (await post({"authorization": f"Bearer {good}"})).status_code == 200
    # an unknown kid refetched the JWKS once, not once per request
    assert get_authenticator().issuers[0].fetches <= 2


async def test_aws_iam_principal_is_the_caller(clean_env: pytest.MonkeyPatch) -> None:
    from starlette.requests import Request

    event = {
        "requestContext": {
            "authorizer": {
                "iam": {
                    "userArn": "arn:aws:sts::123456789012:assumed-role/app-role/session-42",
                    "callerId": "AROAEXAMPLE:session-42",
                }
            }
        }
    }
    scope = {"type": "http", "headers": [], "method": "POST", "path": "/", "aws.event": event}
    caller = await get_authenticator().caller(Request(scope))
    assert caller == "arn:aws:iam::123456789012:role/app-role"
    user = {"requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/bob"}}}}
    scope["aws.event"] = user
    assert await get_authenticator().caller(Request(scope)) == "arn:aws:iam::1:user/bob"


async def test_without_inbound_auth_the_caller_is_the_iam_principal_or_anonymous(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """No INFER_API_KEYS or INFER_JWT: a key sent anyway is not checked, the IAM principal
    Lambda verified is the caller, else ``anonymous``."""
    from starlette.requests import Request

    from shared.web import authenticate_caller

    iam = {"requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/bob"}}}}
    keyed = [(b"authorization", b"Bearer sk-anything")]
    scope = {"type": "http", "headers": keyed, "method": "POST", "path": "/", "aws.event": iam}
    assert await authenticate_caller(Request(scope)) == "arn:aws:iam::1:user/bob"
    scope.pop("aws.event")
    assert await authenticate_caller(Request(scope)) == ANONYMOUS
    clean_env.setenv("infer_api_keys", "ops:" + "k" * 32)  # any case, as the settings read it
    reset_all()
    with pytest.raises(Exception, match="API key"):
        await authenticate_caller(Request(scope))


def test_without_inbound_auth_shared_callers_is_never_imported() -> None:
    """A cold start without inbound auth pays nothing for keys and token issuers."""
    import subprocess

    code = (
        "import asyncio, sys\n"
        "from starlette.requests import Request\n"
        "from shared.web import authenticate_caller\n"
        "scope = {'type': 'http', 'headers': [], 'method': 'POST', 'path': '/'}\n"
        "print(asyncio.run(authenticate_caller(Request(scope))), 'shared.callers' in sys.modules)"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=ROOT, check=True)  # fmt: skip
    assert out.stdout.split() == ["anonymous", "False"]


async def test_required_claims_and_allowed_callers_narrow_a_shared_issuer(
    backend: pytest.MonkeyPatch, identity_server: Server
) -> None:
    issuer = f"{identity_server.url}/tenant-1/v2.0"
    one = fetch_token(identity_server.url, "tenant-1", "app-one", AUD)
    two = fetch_token(identity_server.url, "tenant-1", "app-two", AUD)
    rules = {"issuer": issuer, "audience": AUD, "required_claims": {"tid": "tenant-1"},
             "allowed_callers": [object_id("app-one")]}  # fmt: skip
    backend.setenv("INFER_JWT", json.dumps(rules))
    reset_all()
    assert (await post({"authorization": f"Bearer {one}"})).status_code == 200
    refused = await post({"authorization": f"Bearer {two}"})  # same issuer, another app
    assert refused.status_code == 401 and "allowed caller" in refused.text
    backend.setenv("INFER_JWT", json.dumps({**rules, "required_claims": {"tid": ["other"]}}))
    reset_all()
    lacking = await post({"authorization": f"Bearer {one}"})
    assert lacking.status_code == 401 and "'tid'" in lacking.text
    backend.setenv("INFER_JWT", json.dumps({**rules, "required_claims": {"roles": "X.Call"}}))
    reset_all()
    assert (await post({"authorization": f"Bearer {one}"})).status_code == 401  # no roles


async def test_caller_ids_are_namespaced_by_source(backend: pytest.MonkeyPatch) -> None:
    """A key's caller is ``key:<id>``; a limits rule may still name it ``<id>`` (before
    namespacing), but only a key can be that caller: a token's id is ``jwt:<issuer>:...``."""
    from shared.callers import aliases

    backend.setenv("INFER_API_KEYS", json.dumps([{"id": "team-a", "key": "a-secret"}]))
    reset_all()
    assert await get_authenticator().caller(_request("a-secret")) == "key:team-a"
    assert aliases("key:team-a") == {"key:team-a", "team-a"}
    assert aliases("jwt:https://login.example/t/v2.0:team-a") == {
        "jwt:https://login.example/t/v2.0:team-a"}  # fmt: skip
