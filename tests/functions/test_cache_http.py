"""The response cache through the chat function's app, against gpusim and a real Redis.

Each test builds the app's service from the environment it sets (``INFER_CACHE``,
``INFER_STATE_URL``), sends requests over ASGI and counts what reached gpusim.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import free_port

CHAT_PATH = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "Write one sentence about GPUs."}]
KEYS = ["key-alpha-0123456789", "key-beta-0123456789"]


def sim_calls(sim: Gpusim, path: str = CHAT_PATH) -> int:
    return sum(sim.stats()["requests"].get(path, {}).values())


@pytest.fixture
def cached_app(clean_env: pytest.MonkeyPatch, gpusim: Gpusim) -> Callable[..., httpx2.AsyncClient]:
    def make(
        cache: dict[str, Any] | str,
        state_url: str | None = None,
        backends: list[dict[str, Any]] | None = None,
        **env: str,
    ) -> httpx2.AsyncClient:
        backends = backends or [{"name": "sim", "kind": "openai", "base_url": gpusim.v1}]
        clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
        clean_env.setenv("INFER_CACHE", cache if isinstance(cache, str) else json.dumps(cache))
        clean_env.setenv("INFER_API_KEYS", ",".join(KEYS))
        if state_url:
            clean_env.setenv("INFER_STATE_URL", state_url)
        for k, v in env.items():
            clean_env.setenv(k, v)
        from functions.chat.app import app

        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t")

    return make


async def chat(
    client: httpx2.AsyncClient,
    key: str = KEYS[0],
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx2.Response:
    payload = {"model": "local-model", "messages": MSGS, "max_tokens": 16, **body}
    return await client.post(
        CHAT_PATH, json=payload, headers={"authorization": f"Bearer {key}", **(headers or {})}
    )


def events(response: httpx2.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def text(evs: list[Any]) -> str:
    """The content of a chat stream's events."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in evs[:-1] if c["choices"])


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """The exact cache in the process, or in a real Redis (redis-server 8.2 + Query Engine)."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_stack_url")
    return url


async def test_exact_repeat_is_a_hit_identical_and_never_reaches_the_endpoint(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, store: str | None
) -> None:
    async with cached_app({"mode": "exact"}, store) as client:
        first = await chat(client)
        second = await chat(client)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
        assert second.content == first.content
        assert "x-cache-distance" not in second.headers
        assert sim_calls(gpusim) == 1
        # the same question asked as a stream is the same entry
        streamed = await chat(client, stream=True, stream_options={"include_usage": True})
        assert streamed.headers["x-cache"] == "hit" and sim_calls(gpusim) == 1


async def test_another_caller_gets_no_hit_unless_the_scope_is_shared(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, store: str | None
) -> None:
    async with cached_app({"mode": "exact"}, store) as client:
        await chat(client, KEYS[0])
        other = await chat(client, KEYS[1])
        assert other.headers["x-cache"] == "miss" and sim_calls(gpusim) == 2
        assert (await chat(client, KEYS[1])).headers["x-cache"] == "hit"


async def test_shared_scope_serves_every_caller(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim
) -> None:
    async with cached_app({"mode": "exact", "scope": "shared"}) as client:
        await chat(client, KEYS[0])
        assert (await chat(client, KEYS[1])).headers["x-cache"] == "hit"
        assert sim_calls(gpusim) == 1


async def test_no_cache_asks_the_endpoint_and_no_store_neither_reads_nor_writes(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, store: str | None
) -> None:
    async with cached_app({"mode": "exact"}, store) as client:
        stored = await chat(client)
        refreshed = await chat(client, headers={"cache-control": "no-cache"})
        assert refreshed.headers["x-cache"] == "miss" and sim_calls(gpusim) == 2
        again = await chat(client)
        assert again.headers["x-cache"] == "hit" and again.content == refreshed.content
        assert stored.status_code == 200
        bypass = await chat(client, headers={"cache-control": "no-store"})
        assert bypass.headers["x-cache"] == "bypass" and sim_calls(gpusim) == 3
        fresh = await chat(client, max_tokens=9, headers={"cache-control": "no-store"})
        assert fresh.headers["x-cache"] == "bypass"
        assert (await chat(client, max_tokens=9)).headers["x-cache"] == "miss"  # not stored
        assert sim_calls(gpusim) == 5


async def test_streamed_miss_is_stored_and_a_streamed_hit_is_a_real_stream(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, store: str | None
) -> None:
    async with cached_app({"mode": "exact"}, store) as client:
        opts = {"stream": True, "stream_options": {"include_usage": True}}
        miss = await chat(client, **opts)
        assert miss.headers["x-cache"] == "miss"
        assert miss.headers["content-type"].startswith("text/event-stream")
        hit = await chat(client, **opts)
        assert hit.headers["x-cache"] == "hit" and sim_calls(gpusim) == 1
        assert hit.headers["content-type"].startswith("text/event-stream")
        got, want = events(hit), events(miss)
        assert got[-1] == want[-1] == "[DONE]"
        assert text(got) == text(want) and text(got)
        content_chunks = [
            c for c in got[:-1] if c["choices"] and c["choices"][0]["delta"].get("content")
        ]
        assert len(content_chunks) >= 3
        assert got[-2]["usage"] == want[-2]["usage"] and got[-2]["choices"] == []
        whole = await chat(client)  # the assembled stream answers a non-streamed request
        assert whole.headers["x-cache"] == "hit"
        assert whole.json()["choices"][0]["message"]["content"] == text(want)
        assert whole.json()["usage"] == want[-2]["usage"]


async def test_stream_without_usage_is_not_replayed_to_a_request_that_wants_usage(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim
) -> None:
    async with cached_app({"mode": "exact"}) as client:
        await chat(client, stream=True)
        plain = await chat(client, stream=True)
        assert plain.headers["x-cache"] == "hit"
        assert all(c == "[DONE]" or "usage" not in c or c["usage"] is None for c in events(plain))
        wants = await chat(client, stream=True, stream_options={"include_usage": True})
        assert wants.headers["x-cache"] == "miss" and sim_calls(gpusim) == 2
        assert events(wants)[-2]["usage"]["total_tokens"] > 0


async def test_failed_answers_are_not_stored(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim
) -> None:
    async with cached_app({"mode": "exact"}, INFER_MAX_RETRIES="0") as client:
        gpusim.set_fault("500", count=2)  # the call and its quick retry
        assert (await chat(client)).status_code >= 500
        gpusim.set_fault("midstream", count=-1)  # every continuation is cut too
        cut = await chat(client, stream=True)
        assert "error" in cut.text and "[DONE]" not in cut.text
        gpusim.clear_faults()
        ok = await chat(client)
        assert ok.status_code == 200 and ok.headers["x-cache"] == "miss"


async def test_redis_down_skips_the_cache_and_never_fails_the_request(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim
) -> None:
    from shared import state
    from shared.lifecycle import reset_all

    reset_all()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with cached_app({"mode": "exact"}, dead) as client:
        for stream in (False, True, False):
            r = await chat(client, stream=stream)
            assert r.status_code == 200 and r.headers["x-cache"] == "bypass"
            assert events(r)[-1] == "[DONE]" if stream else r.json()["choices"]
        assert sim_calls(gpusim) == 3
        assert state.failures["cache"] >= 1
    reset_all()


async def test_a_hit_is_marked_so_limits_charge_no_tokens(
    cached_app: Callable[..., httpx2.AsyncClient],
) -> None:
    from shared.context import Context
    from shared.schemas import Operation
    from shared.service import get_service

    async with cached_app({"mode": "exact"}):
        service = get_service()
        payload = {"model": "local-model", "messages": MSGS, "max_tokens": 8}
        first, second = (
            Context.with_timeout(10, request_id="a"),
            Context.with_timeout(10, request_id="b"),
        )
        await service.complete(Operation.CHAT, payload, first)
        await service.complete(Operation.CHAT, payload, second)
        assert not first.served_from_cache and first.cache_status == "miss"
        assert second.served_from_cache and second.cache_status == "hit"
        assert service.cache is not None and service.cache.stats.hits == 1


async def test_semantic_mode_filters_on_caller_model_and_earlier_turns(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, redis_stack_url: str
) -> None:
    # gpusim's embeddings are deterministic, not semantic: the same words give distance 0,
    # so every miss below comes from the tags (scope, context), never from the distance.
    cache = {
        "mode": "semantic",
        "semantic": {"embeddings_model": "local-model", "ignore_system": True},
    }
    q = {"role": "user", "content": "What is a GPU?"}
    async with cached_app(cache, redis_stack_url) as client:
        base = await chat(client, messages=[{"role": "system", "content": "Be brief."}, q])
        assert base.headers["x-cache"] == "miss"
        assert sim_calls(gpusim, "/v1/embeddings") == 1
        # another system prompt (ignored): not the exact key, the same vector and context
        near = await chat(client, messages=[{"role": "system", "content": "Be kind."}, q])
        assert near.headers["x-cache"] == "hit" and near.content == base.content
        assert float(near.headers["x-cache-distance"]) == pytest.approx(0.0, abs=1e-4)
        # the exact repeat needs no embedding at all
        again = await chat(client, messages=[{"role": "system", "content": "Be brief."}, q])
        assert again.headers["x-cache"] == "hit" and "x-cache-distance" not in again.headers
        assert sim_calls(gpusim, "/v1/embeddings") == 2
        earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        assert (await chat(client, messages=[*earlier, q])).headers["x-cache"] == "miss"
        assert (await chat(client, KEYS[1], messages=[q])).headers["x-cache"] == "miss"
        assert (await chat(client, messages=[q], max_tokens=5)).headers["x-cache"] == "miss"
        assert sim_calls(gpusim) == 4
        streamed = await chat(
            client, messages=[q], stream=True, stream_options={"include_usage": True}
        )
        assert streamed.headers["x-cache"] == "hit"  # the earlier answer for [q] (max_tokens 16)
        assert events(streamed)[-1] == "[DONE]" and sim_calls(gpusim) == 4


async def test_semantic_mode_without_embeddings_falls_back_to_the_exact_key(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, redis_stack_url: str
) -> None:
    cache = {"mode": "semantic", "semantic": {"embeddings_model": "no-such-model"}}
    async with cached_app(cache, redis_stack_url) as client:
        assert (await chat(client)).headers["x-cache"] == "miss"
        assert (await chat(client)).headers["x-cache"] == "hit"
        assert sim_calls(gpusim) == 1


async def test_invalid_cache_setting_names_the_field_to_callers_the_app_knows_only(
    cached_app: Callable[..., httpx2.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    async with cached_app({"mode": "semantic"}) as client:
        with caplog.at_level("ERROR", logger="shared.web"):
            r = await chat(client)  # with a configured key: an authenticated caller
        assert r.status_code == 500
        assert "INFER_CACHE" in r.json()["error"]["message"]
        assert "INFER_CACHE" in caplog.text
        stranger = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": []},
            headers={"authorization": "Bearer not-a-key"},
        )  # fmt: skip
        assert stranger.status_code == 401  # refused before any setting is read


async def test_semantic_index_is_created_again_after_redis_lost_it(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, redis_stack: Any
) -> None:
    from tests.fixtures.redis_stack import RedisStackServer

    assert isinstance(redis_stack, RedisStackServer)
    redis_stack.flushall()
    cache = {"mode": "semantic", "semantic": {"embeddings_model": "local-model"}}
    async with cached_app(cache, redis_stack.url, INFER_STATE_COOLDOWN_S="0") as client:
        assert (await chat(client)).headers["x-cache"] == "miss"
        redis_stack.flushall()  # entries and the index are gone (a failover, a flush)
        lost = await chat(client, max_tokens=7)
        assert lost.status_code == 200 and lost.headers["x-cache"] == "bypass"
        # the answer was stored once Redis answered again, into a re-created index
        again = await chat(client, max_tokens=7)
        assert again.headers["x-cache"] == "hit" and again.content == lost.content
        other = await chat(client, max_tokens=5)
        assert other.headers["x-cache"] == "miss"
        assert (await chat(client, max_tokens=5)).headers["x-cache"] == "hit"


async def test_semantic_embeddings_go_through_the_router_with_failover(
    cached_app: Callable[..., httpx2.AsyncClient], gpusim: Gpusim, redis_stack_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refuses connections
    backends = [
        {"name": "chat", "kind": "openai", "base_url": gpusim.v1, "models": ["local-model"]},
        {"name": "embed-down", "kind": "openai", "base_url": dead, "models": ["embedder"]},
        {"name": "embed-up", "kind": "openai", "base_url": gpusim.v1, "models": ["embedder"],
         "served_model": "local-model", "priority": 1},
    ]  # fmt: skip
    cache = {
        "mode": "semantic",
        "semantic": {"embeddings_model": "embedder", "ignore_system": True},
    }
    q = {"role": "user", "content": "What is a GPU?"}
    async with cached_app(cache, redis_stack_url, backends) as client:
        first = await chat(client, messages=[{"role": "system", "content": "A"}, q])
        near = await chat(client, messages=[{"role": "system", "content": "B"}, q])
        assert first.headers["x-cache"] == "miss" and near.headers["x-cache"] == "hit"
        assert "x-cache-distance" in near.headers  # the vector query found it
        assert sim_calls(gpusim, "/v1/embeddings") == 2  # both failed over to embed-up
