"""shared.state against a real redis-server: plain, Entra ID and IAM sign-in, outages."""

from __future__ import annotations

import asyncio
import datetime
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import state
from shared.errors import ConfigError
from shared.lifecycle import reset_all
from tests.fixtures.redis import RedisServer


async def _ping(ctx: object = None) -> bool:
    async def ping(r: object) -> bool:
        return bool(await r.ping())  # type: ignore[attr-defined]

    return await state.run("test", None, ping)


def test_plain_url_connects_and_reuses_one_client(state_env: str) -> None:
    async def main() -> None:
        assert await _ping()
        first = await state.get_redis()
        assert await state.get_redis() is first

    asyncio.run(main())


def test_password_in_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_STATE_URL", "redis://user:secret@127.0.0.1:6379")
    reset_all()
    with pytest.raises(ConfigError, match="must not carry a password"):
        state.get_state_settings()
    reset_all()


def test_down_redis_fails_fast_counted_and_cools_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.procs import free_port

    monkeypatch.setenv("INFER_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("INFER_STATE_COOLDOWN_S", "60")
    reset_all()

    async def main() -> None:
        with pytest.raises(state.StateUnavailable):
            await _ping()
        assert state.failures["test"] == 1
        assert not state.available("test")
        assert state.available("cache")  # each component its own circuit
        started = time.monotonic()
        with pytest.raises(state.StateUnavailable, match="cooling down"):
            await _ping()
        assert time.monotonic() - started < 0.5  # no second connection attempt
        assert state.failures["test"] == 1

    asyncio.run(main())
    reset_all()


def test_password_from_named_setting(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, redis_url: str
) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "app", "on", ">s3cret-pw", "~*", "+@all")  # type: ignore[attr-defined]
    try:
        monkeypatch.setenv("INFER_STATE_URL", f"redis://app@127.0.0.1:{redis_server.port}/0")
        monkeypatch.setenv("INFER_STATE_PASSWORD_SETTING", "MY_REDIS_PW")
        monkeypatch.setenv("MY_REDIS_PW", "s3cret-pw")
        reset_all()
        assert asyncio.run(_ping())
        assert state.state().plan.url == f"redis://127.0.0.1:{redis_server.port}/0"
    finally:
        admin.execute_command("ACL", "DELUSER", "app")  # type: ignore[attr-defined]
        reset_all()


def test_entra_signs_in_with_managed_identity_token(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, redis_url: str, cloud_env: None
) -> None:
    """The managed identity's token is the password and its object id the user name."""
    from shared.backends.azure_auth import token_source

    client_id = "redis-app-identity"
    token = asyncio.run(token_source(client_id, state.REDIS_SCOPE).token())
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", client_id, "on", f">{token}", "~*", "+@all")  # type: ignore[attr-defined]
    try:
        monkeypatch.setenv("INFER_STATE_URL", f"{redis_url}?auth=entra")
        monkeypatch.setenv("INFER_STATE_CLIENT_ID", client_id)
        reset_all()
        assert state.state().plan.auth == "entra"
        assert asyncio.run(_ping())
        # a token the server does not know is refused: the sign-in really happened
        admin.execute_command("ACL", "SETUSER", client_id, "resetpass", ">other")  # type: ignore[attr-defined]
        reset_all()
        with pytest.raises(state.StateUnavailable):
            asyncio.run(_ping())
    finally:
        admin.execute_command("ACL", "DELUSER", client_id)  # type: ignore[attr-defined]
        reset_all()


def test_aws_iam_token_is_a_sigv4_presigned_connect(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, redis_url: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("INFER_STATE_URL", f"redis://cache-user@127.0.0.1:{redis_server.port}/0")
    monkeypatch.setenv("INFER_STATE_AUTH", "aws_iam")
    monkeypatch.setenv("INFER_STATE_AWS_CACHE_NAME", "my-cache")
    monkeypatch.setenv("INFER_STATE_AWS_REGION", "eu-west-1")
    reset_all()
    creds = state.state()._source
    assert isinstance(creds, state.AwsIamCredentials)
    token = creds.token()
    assert creds.token() == token  # reused while it is fresh
    parts = urlsplit("https://" + token)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.hostname == "my-cache"
    assert query["Action"] == "connect" and query["User"] == "cache-user"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-Credential"].endswith("/eu-west-1/elasticache/aws4_request")
    # the signature verifies with the secret: recompute it for the same time
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: signed_at)
    request = AWSRequest(method="GET", url="https://my-cache/?Action=connect&User=cache-user")
    signer = SigV4QueryAuth(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        "elasticache",
        "eu-west-1",
        expires=900,
    )
    signer.add_auth(request)
    expected = parse_qs(urlsplit(request.url).query)["X-Amz-Signature"][0]
    assert query["X-Amz-Signature"] == expected
    # and the token is what the client sends as AUTH <user> <token>
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "cache-user", "on", f">{token}", "~*", "+@all")  # type: ignore[attr-defined]
    try:
        assert asyncio.run(_ping())
    finally:
        admin.execute_command("ACL", "DELUSER", "cache-user")  # type: ignore[attr-defined]
        reset_all()


def test_entra_client_is_rebuilt_before_its_token_expires(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("INFER_STATE_URL", f"{redis_url}?auth=entra&user=some-oid")
    reset_all()
    client = state.state()
    expiry = [time.time() + 3600]

    async def credentials() -> tuple[str, str, float]:
        return "some-oid", "token", expiry[0]

    monkeypatch.setattr(client._source, "credentials", credentials)

    async def main() -> None:
        first = await state.get_redis()
        assert await state.get_redis() is first  # reused while the token is fresh
        expiry[0] = time.time() + state.ENTRA_ROTATE_MARGIN_S  # now within the margin
        client._clients[id(asyncio.get_running_loop())] = (
            asyncio.get_running_loop(),
            first,
            time.time() - 1,
        )
        second = await state.get_redis()
        assert second is not first  # a new pool, signed in with the current token
        assert await state.get_redis() is second

    asyncio.run(main())
    reset_all()


def test_our_url_options_never_reach_redis_py() -> None:
    """auth, user, client_id and cache_name are ours: redis-py would refuse them as kwargs."""
    from redis.connection import parse_url

    from shared.state import ConnectionPlan, StateSettings

    plan = ConnectionPlan(
        StateSettings(url="rediss://infer-fn@h.example:6379/0?auth=aws_iam&cache_name=my-cache")
    )
    assert (plan.auth, plan.user, plan.cache_name) == ("aws_iam", "infer-fn", "my-cache")
    assert plan.url == "rediss://h.example:6379/0"
    assert set(parse_url(plan.url)) <= {"host", "port", "db", "connection_class"}
