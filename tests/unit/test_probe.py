"""shared.probe against gpusim: modes, TTFT, and what each outcome does to the circuits."""

from __future__ import annotations

from typing import Any

import pytest

from shared.backends.openai_compat import OpenAIBackendConfig
from shared.backends.registry import build_backend
from shared.context import Context
from shared.probe import ProbeSettings, run_probe
from shared.router import Router
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import free_port

SETTINGS = ProbeSettings(timeout_s=2.0, open_s=30.0)


def router_for(*configs: dict[str, Any]) -> Router:
    configs_ = [OpenAIBackendConfig(kind="openai", models=["local-model"], **c) for c in configs]
    return Router([build_backend(c) for c in configs_])


async def probe(router: Router) -> dict[str, dict[str, Any]]:
    report = await run_probe(router, Context.with_timeout(10), SETTINGS)
    return {b["backend"]: b for b in report["backends"]}


async def test_stream_probe_measures_ttft_and_sends_one_token(gpusim: Gpusim) -> None:
    router = router_for({"name": "sim", "base_url": gpusim.v1})
    got = (await probe(router))["sim"]
    assert got["available"] and got["mode"] == "stream"
    assert 0 < got["ttft_s"] <= got["duration_s"]
    stats = gpusim.stats()
    assert stats["completed"] == 1


async def test_chat_and_ready_modes(gpusim: Gpusim) -> None:
    router = router_for(
        {"name": "chat", "base_url": gpusim.v1, "probe": "chat"},
        {"name": "ready", "base_url": gpusim.v1, "probe": "ready"},
        {"name": "off", "base_url": gpusim.v1, "probe": "off"},
    )
    got = await probe(router)
    assert set(got) == {"chat", "ready"}
    assert got["chat"]["available"] and got["chat"]["ttft_s"] == pytest.approx(
        got["chat"]["duration_s"], abs=0.01
    )
    assert got["ready"]["available"] and got["ready"]["ttft_s"] is None
    assert gpusim.stats()["completed"] == 1  # only the chat probe generated


async def test_success_closes_an_open_circuit(gpusim: Gpusim) -> None:
    router = router_for({"name": "sim", "base_url": gpusim.v1})
    slot = router.slots[0]
    slot.circuit.trip(router.clock(), 60)
    assert slot.circuit.state(router.clock()) == "open"
    got = (await probe(router))["sim"]
    assert got["circuit"] == "closed"
    assert slot.circuit.failures == 0


async def test_dead_endpoint_opens_the_circuit_for_open_s() -> None:
    router = router_for({"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
    got = (await probe(router))["dead"]
    assert not got["available"] and got["circuit"] == "open"
    assert got["error_type"] == "BackendConnectionError"
    left = router.slots[0].circuit.open_until - router.clock()
    assert 25 < left <= 30


async def test_rate_limited_endpoint_opens_for_its_retry_after(gpusim: Gpusim) -> None:
    gpusim.set_fault("429", count=5, retry_after=90)
    router = router_for({"name": "sim", "base_url": gpusim.v1, "timeout_s": 1})
    got = (await probe(router))["sim"]
    assert got["error_type"] == "BackendRateLimited" and got["circuit"] == "open"
    assert router.slots[0].circuit.open_until - router.clock() > 60


async def test_hanging_endpoint_is_cut_at_the_probe_deadline(gpusim: Gpusim) -> None:
    gpusim.set_fault("timeout", count=5)
    router = router_for({"name": "sim", "base_url": gpusim.v1})
    got = (await probe(router))["sim"]
    assert not got["available"] and got["circuit"] == "open"
    assert got["duration_s"] < SETTINGS.timeout_s + 1.0


async def test_misconfigured_backend_is_unavailable_but_keeps_its_circuit(
    gpusim: Gpusim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROBE_TEST_KEY", raising=False)
    router = router_for(
        {"name": "nokey", "base_url": gpusim.v1, "auth": "key", "api_key_setting": "PROBE_TEST_KEY"}
    )
    got = (await probe(router))["nokey"]
    assert not got["available"] and got["error_type"] == "ConfigError"
    assert got["circuit"] == "closed"
