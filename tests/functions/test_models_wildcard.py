"""GET /v1/models lists what wildcard backends serve (asked once, cached), skipping dead ones."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import openai
import pytest

from functions.models.app import app as models_app
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import free_port


def model_calls(sim: Gpusim) -> int:
    return int(sum(sim.stats()["requests"].get("/v1/models", {}).values()))


async def test_wildcard_backends_list_what_the_endpoint_serves(
    clean_env: pytest.MonkeyPatch, gpusim_factory: Callable[..., Gpusim]
) -> None:
    sim = gpusim_factory(models="served-a,served-b,*")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    backends = [
        {"name": "fixed", "kind": "openai", "base_url": sim.v1, "models": ["configured"]},
        {"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["*"],
         "served_model": "renamed"},
        {"name": "dead", "kind": "openai", "base_url": dead, "models": ["*"]},
        {"name": "aoai", "kind": "azure_openai", "endpoint": "http://127.0.0.1:9",
         "deployment": "gpt-4o-prod", "models": ["*"]},
    ]  # fmt: skip
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))

    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=models_app), base_url="http://m")
    client = openai.AsyncOpenAI(
        base_url="http://m/v1", api_key="unused", http_client=http, max_retries=0
    )
    try:
        ids = [m.id async for m in client.models.list()]
        assert ids == ["configured", "served-a", "served-b", "renamed", "gpt-4o-prod"]
        assert model_calls(sim) == 1
        again = [m.id async for m in client.models.list()]
        assert again == ids
        assert model_calls(sim) == 1  # cached: the endpoint was asked once
    finally:
        await client.close()
