"""Property: no request body makes any HTTP function answer 5xx or hang, and each still
answers a normal request afterwards.

The real handlers (FastAPI apps of every HTTP function) run in-process against a real gpusim;
the bodies come from hypothesis: arbitrary JSON, JSON shaped like OpenAI requests with wrong
parts (roles, tools, tool_choice, stop, logprobs, inputs), deep nesting, and bytes that are
not JSON at all. Examples are bounded so the whole file stays within seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fixtures.gpusim import Gpusim

#: Per-request bound: a request that takes longer has hung (gpusim answers in milliseconds).
HANG_S = 30.0
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing noise on a shared machine; hangs are caught by HANG_S instead
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure is reproducible
    database=None,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
any_json = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) | any_json
message = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": st.text(max_size=30) | st.lists(any_json, max_size=3) | any_json,
        "name": any_json,
        "tool_calls": any_json,
        "tool_call_id": st.text(max_size=10) | any_json,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "custom"]) | any_json},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.text(max_size=70) | any_json}, optional={"parameters": any_json}
        )
        | any_json
    },
)
generation_fields = {
    "stream": st.booleans() | any_json,
    "stream_options": any_json,
    "max_tokens": st.integers(-5, 10_000) | any_json,
    "temperature": st.floats(-1, 3, allow_nan=False) | any_json,
    "top_p": any_json,
    "n": st.integers(-1, 200) | any_json,
    "stop": st.lists(st.text(max_size=5), max_size=6) | any_json,
    "seed": any_json,
    "logit_bias": any_json,
    "presence_penalty": any_json,
    "user": any_json,
    "unknown_vendor_field": any_json,
}
model = st.just("local-model") | st.text(max_size=12) | any_json
chat_body = st.fixed_dictionaries(
    {"model": model, "messages": st.lists(message, max_size=4) | any_json},
    optional={
        **generation_fields,
        "tools": st.lists(tool, max_size=3) | any_json,
        "tool_choice": st.sampled_from(["none", "auto", "required", "maybe"]) | any_json,
        "logprobs": any_json,
        "top_logprobs": st.integers(-2, 30) | any_json,
        "response_format": any_json,
    },
)
token_ids = st.lists(st.integers(-3, 50_000), max_size=5)
completion_body = st.fixed_dictionaries(
    {"model": model, "prompt": st.text(max_size=20) | token_ids | st.lists(token_ids, max_size=3)
     | any_json},
    optional={**generation_fields, "logprobs": any_json, "best_of": any_json, "echo": any_json},
)  # fmt: skip
embedding_body = st.fixed_dictionaries(
    {"model": model,
     "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=5) | token_ids
     | st.lists(token_ids, max_size=3) | any_json},
    optional={"encoding_format": any_json, "dimensions": st.integers(-2, 5000) | any_json},
)  # fmt: skip
job_body = st.fixed_dictionaries(
    {"body": chat_body | any_json},
    optional={"url": st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]) | any_json,
              "method": any_json, "custom_id": any_json, "callback_url": any_json},
)  # fmt: skip


def deep(depth: int) -> bytes:
    return b'{"model": "local-model", "messages": ' + b"[" * depth + b"]" * depth + b"}"


raw_bodies = (
    st.binary(max_size=64)
    | st.sampled_from([deep(100), deep(5_000), deep(200_000), b"", b"null", b"[]", b'"x"'])
    | st.builds(lambda v: json.dumps(v).encode(), any_json)
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for every example (the service's HTTP client belongs to it)."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def fuzz_env(job_env: Path, clean_env: pytest.MonkeyPatch, gpusim: Gpusim) -> Gpusim:
    backends = [{"name": "sim", "kind": "openai", "base_url": gpusim.v1, "models": ["*"]}]
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_REQUEST_TIMEOUT_S", "20")
    return gpusim


def apps() -> dict[str, Any]:
    from functions.chat.app import app as chat
    from functions.completions.app import app as completions
    from functions.embeddings.app import app as embeddings
    from functions.health.app import app as health
    from functions.jobs.app import app as jobs
    from functions.models.app import app as models

    return {"chat": chat, "completions": completions, "embeddings": embeddings,
            "health": health, "jobs": jobs, "models": models}  # fmt: skip


ROUTES: dict[str, tuple[str, str, str]] = {
    "chat": ("chat", "POST", "/v1/chat/completions"),
    "completions": ("completions", "POST", "/v1/completions"),
    "embeddings": ("embeddings", "POST", "/v1/embeddings"),
    "jobs": ("jobs", "POST", "/v1/jobs"),
    "models": ("models", "GET", "/v1/models"),
    "healthz": ("health", "GET", "/healthz"),
    "readyz": ("health", "GET", "/readyz"),
}
NORMAL: dict[str, dict[str, Any]] = {
    "chat": {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]},
    "completions": {"model": "local-model", "prompt": "hi", "max_tokens": 4},
    "embeddings": {"model": "local-model", "input": "hi"},
    "jobs": {
        "url": "/v1/chat/completions",
        "body": {"model": "local-model", "messages": [{"role": "user", "content": "x"}]},
    },
}


def send(
    loop: asyncio.AbstractEventLoop, route: str, content: bytes, method: str | None = None
) -> httpx2.Response:
    app_name, default_method, path = ROUTES[route]

    async def go() -> httpx2.Response:
        transport = httpx2.ASGITransport(app=apps()[app_name])
        async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
            return await asyncio.wait_for(
                client.request(method or default_method, path, content=content,
                               headers={"content-type": "application/json"}),
                HANG_S,
            )  # fmt: skip

    return loop.run_until_complete(go())


def check(response: httpx2.Response, body: bytes) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500], body[:300])
    if response.status_code >= 400:
        assert "error" in response.json() or response.status_code == 405


def still_answers(loop: asyncio.AbstractEventLoop, route: str) -> None:
    body = json.dumps(NORMAL[route]).encode() if route in NORMAL else b""
    r = send(loop, route, body)
    assert r.status_code in (200, 202), r.text


Fuzz = Callable[..., None]


@pytest.mark.parametrize(
    ("route", "strategy"),
    [("chat", chat_body), ("completions", completion_body), ("embeddings", embedding_body),
     ("jobs", job_body)],
)  # fmt: skip
def test_shaped_bodies_never_5xx_or_hang(
    fuzz_env: Gpusim, loop: asyncio.AbstractEventLoop, route: str, strategy: Any
) -> None:
    @FUZZ
    @given(body=strategy)
    def prop(body: Any) -> None:
        raw = json.dumps(body).encode()
        check(send(loop, route, raw), raw)

    prop()
    still_answers(loop, route)


@pytest.mark.parametrize("route", list(ROUTES))
def test_arbitrary_bytes_never_5xx_or_hang(
    fuzz_env: Gpusim, loop: asyncio.AbstractEventLoop, route: str
) -> None:
    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(raw=raw_bodies, method=st.sampled_from([None, "POST", "GET", "PUT"]))
    @example(raw=deep(5_000), method=None)  # past Python's recursion limit
    @example(raw=deep(200_000), method=None)
    @example(raw=deep(100), method=None)  # parses, but deeper than any request needs
    def prop(raw: bytes, method: str | None) -> None:
        check(send(loop, route, raw, method), raw)

    prop()
    still_answers(loop, route)
