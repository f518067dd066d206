"""The semantic cache with real embeddings: all-MiniLM-L6-v2 behind an OpenAI embeddings API.

gpusim serves ``/v1/embeddings`` with the model (``--embeddings-model minilm``); the cache
reaches it through the router as the backend serving ``embeddings_model``, like any
embeddings call. Chat goes to a second gpusim. Redis is redis-server 8.2 with the Query
Engine. Setup (model load) takes ~10 s; `make test-semantic` runs only these.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.fixtures.gpusim import FAST_FLAGS, Gpusim, gpusim_argv
from tests.fixtures.procs import ServerProcess, free_port

pytestmark = [pytest.mark.semantic, pytest.mark.timeout(400)]

EMBED_MODEL = "all-MiniLM-L6-v2"
KEYS = ["key-alpha-0123456789", "key-beta-0123456789"]
QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"
OTHER = "How do I bake sourdough bread?"


@pytest.fixture(scope="module")
def embedder() -> Iterator[Gpusim]:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        pytest.fail("sentence-transformers is missing: pip install -r requirements-semantic.txt")
    flags = {**FAST_FLAGS, "embeddings_model": "minilm", "models": [EMBED_MODEL]}
    port = free_port()
    server = ServerProcess(gpusim_argv(port, flags), port, ready_path="/health", name="minilm")
    server.start(timeout=240)  # loading torch and the model takes ~10 s, far more under load
    sim = Gpusim(server)
    yield sim
    sim.close()
    sim.server.stop()


@pytest.fixture
def client(
    clean_env: pytest.MonkeyPatch, gpusim: Gpusim, embedder: Gpusim, redis_stack_url: str
) -> httpx2.AsyncClient:
    embedder.reset()
    backends = [
        {"name": "chat", "kind": "openai", "base_url": gpusim.v1, "models": ["local-model"]},
        {"name": "embed", "kind": "openai", "base_url": embedder.v1, "models": [EMBED_MODEL]},
    ]
    cache = {"mode": "semantic", "semantic": {"embeddings_model": EMBED_MODEL}}
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_CACHE", json.dumps(cache))
    clean_env.setenv("INFER_STATE_URL", redis_stack_url)
    clean_env.setenv("INFER_API_KEYS", ",".join(KEYS))
    from functions.chat.app import app

    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t")


async def ask(
    client: httpx2.AsyncClient, text: str, key: str = KEYS[0], earlier: list[Any] | None = None
) -> httpx2.Response:
    messages = [*(earlier or []), {"role": "user", "content": text}]
    body = {"model": "local-model", "messages": messages, "max_tokens": 16}
    r = await client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    return r


def calls(sim: Gpusim, path: str) -> int:
    return sum(sim.stats()["requests"].get(path, {}).values())


async def test_a_paraphrase_is_a_hit(
    client: httpx2.AsyncClient, gpusim: Gpusim, embedder: Gpusim
) -> None:
    async with client:
        first = await ask(client, QUESTION)
        assert first.headers["x-cache"] == "miss"
        hit = await ask(client, PARAPHRASE)
        assert hit.headers["x-cache"] == "hit"
        assert hit.content == first.content
        distance = float(hit.headers["x-cache-distance"])
        assert 0.0 < distance <= 0.1
        assert calls(gpusim, "/v1/chat/completions") == 1
        assert calls(embedder, "/v1/embeddings") == 2  # through the router, to the embed backend


async def test_a_different_question_is_a_miss(client: httpx2.AsyncClient, gpusim: Gpusim) -> None:
    async with client:
        await ask(client, QUESTION)
        other = await ask(client, OTHER)
        assert other.headers["x-cache"] == "miss" and "x-cache-distance" not in other.headers
        assert calls(gpusim, "/v1/chat/completions") == 2


async def test_the_same_last_message_after_other_earlier_turns_is_a_miss(
    client: httpx2.AsyncClient, gpusim: Gpusim
) -> None:
    earlier = [
        {"role": "user", "content": "Let's talk about Germany."},
        {"role": "assistant", "content": "Sure, what would you like to know?"},
    ]
    async with client:
        await ask(client, QUESTION)
        assert (await ask(client, QUESTION, earlier=earlier)).headers["x-cache"] == "miss"
        assert (await ask(client, PARAPHRASE, earlier=earlier)).headers["x-cache"] == "hit"
        assert calls(gpusim, "/v1/chat/completions") == 2


async def test_another_caller_gets_no_hit(client: httpx2.AsyncClient, gpusim: Gpusim) -> None:
    async with client:
        await ask(client, QUESTION, KEYS[0])
        assert (await ask(client, QUESTION, KEYS[1])).headers["x-cache"] == "miss"
        assert (await ask(client, PARAPHRASE, KEYS[1])).headers["x-cache"] == "hit"
        assert calls(gpusim, "/v1/chat/completions") == 2
