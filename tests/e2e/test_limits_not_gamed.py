"""Caller limits that cannot be gamed, against a counting endpoint and two devhost processes
sharing one real Redis (gpusim's ``vllm:generation_tokens_total`` counts what was generated).

- ``max_parallel`` 2: ten concurrent requests sending the same ``x-request-id`` -> at most 2
  running at the endpoint (the slot id is ours, not the caller's).
- ``tpm`` 1,000: twenty concurrent requests with ``max_tokens`` 200 -> at most 1,200 tokens
  generated (admission reserves the worst case, not the prompt estimate).
- ``tpm`` 1,000: five streams of 300 reasoning-heavy tokens without ``include_usage`` -> at
  most 1,300 generated; the caller's stream carries no usage event it did not ask for, yet
  the limit is charged the endpoint's usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Write one sentence about GPUs."}]


def generated(sim: Gpusim) -> int:
    text = sim.metrics()
    return int(sum(float(v) for v in re.findall(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)",
                                                 text, re.M)))  # fmt: skip


Hosts = Callable[..., list[DevhostProcess]]


@pytest.fixture
def hosts(redis_url: str) -> Iterator[Hosts]:
    made: list[DevhostProcess] = []

    def make(sim: Gpusim, limits: list[dict[str, Any]], **backend: Any) -> list[DevhostProcess]:
        """Two devhost processes sharing the Redis; ``backend``: more fields of the entry."""
        backends = [{"name": "gpu", "kind": "openai", "base_url": sim.v1,
                     "models": ["local-model"], **backend}]  # fmt: skip
        env = {
            "INFER_BACKENDS": json.dumps(backends),
            "INFER_LIMITS": json.dumps(limits),
            "INFER_STATE_URL": redis_url,
            "INFER_STATE_TIMEOUT_S": "5",
            "INFER_MAX_RETRIES": "0",
            "PYTHONUNBUFFERED": "1",
        }
        for i in range(2):
            port = free_port()
            argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
                    "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
            made.append(DevhostProcess(argv, port, ready_path="/api/healthz", env=env,
                                       name=f"devhost-gamed-{i}").start())  # fmt: skip
        return made[-2:]

    yield make
    for h in made:
        h.stop()


def _fan_out(
    hosts: list[DevhostProcess], n: int, send: Callable[[httpx2.Client, str], Any]
) -> list[Any]:
    with httpx2.Client(timeout=60) as client, ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: send(client, hosts[i % 2].url), range(n)))


def _chat(max_tokens: int) -> Callable[[httpx2.Client, str], int]:
    """A plain chat request asking for ``max_tokens``; its status code."""

    def send(client: httpx2.Client, url: str) -> int:
        body = {"model": "local-model", "messages": PROMPT, "max_tokens": max_tokens}
        return client.post(f"{url}/api/v1/chat/completions", json=body).status_code

    return send


def test_one_request_id_sent_ten_times_holds_max_parallel(
    gpusim_factory: Callable[..., Gpusim], hosts: Any
) -> None:
    sim = gpusim_factory(itl_ms=20, min_output_tokens=16, max_output_tokens=16)
    pair = hosts(sim, [{"caller": "*", "max_parallel": 2}])
    sim.reset()

    def send(client: httpx2.Client, url: str) -> int:
        body = {"model": "local-model", "messages": PROMPT, "max_tokens": 16}
        r = client.post(f"{url}/api/v1/chat/completions", json=body,
                        headers={"x-request-id": "the-same-id"})  # fmt: skip
        assert r.headers["x-request-id"] == "the-same-id"  # echoed
        return r.status_code

    codes = _fan_out(pair, 10, send)
    print(f"max_parallel 2, one x-request-id x10: peak {sim.stats()['peak_running']}")
    assert sim.stats()["peak_running"] <= 2
    assert codes.count(200) >= 2 and set(codes) <= {200, 429}


def test_max_tokens_is_reserved_so_a_burst_cannot_overrun_tpm(
    gpusim_factory: Callable[..., Gpusim], hosts: Any
) -> None:
    sim = gpusim_factory(min_output_tokens=200, max_output_tokens=200, itl_ms=1)
    pair = hosts(sim, [{"caller": "*", "tpm": 1000}])
    before = generated(sim)

    codes = _fan_out(pair, 20, _chat(200))
    made = generated(sim) - before
    print(f"tpm 1000, 20 x max_tokens 200: {made} generated, {codes.count(200)} admitted")
    assert codes.count(200) >= 1 and set(codes) <= {200, 429}
    assert made <= 1200, (made, codes)


def test_reasoning_streams_without_usage_are_charged_the_endpoints_usage(
    gpusim_factory: Callable[..., Gpusim], hosts: Any
) -> None:
    sim = gpusim_factory(min_output_tokens=300, max_output_tokens=300, reasoning_tokens=280,
                         itl_ms=1)  # fmt: skip
    pair = hosts(sim, [{"caller": "*", "tpm": 1000}])
    before = generated(sim)

    def send(client: httpx2.Client, url: str) -> tuple[int, bytes]:
        body = {"model": "local-model", "messages": PROMPT, "max_tokens": 300, "stream": True}
        r = client.post(f"{url}/api/v1/chat/completions", json=body)
        return r.status_code, r.content

    answers = _fan_out(pair, 5, send)
    made = generated(sim) - before
    print(f"tpm 1000, 5 reasoning streams: {made} generated")
    assert made <= 1300, (made, [a[0] for a in answers])
    streamed = [body for code, body in answers if code == 200]
    assert streamed
    for body in streamed:
        assert b"reasoning_content" in body and body.endswith(b"data: [DONE]\n\n")
        assert b'"usage":{' not in body  # not asked for: not sent
    # the limit was charged the real usage (300 + prompt each), not the reservation only:
    # one more such request is refused now
    with httpx2.Client(timeout=30) as client:
        body = {"model": "local-model", "messages": PROMPT, "max_tokens": 300}
        again = client.post(f"{pair[0].url}/api/v1/chat/completions", json=body)
    assert again.status_code == 429


def test_a_budget_in_money_holds_across_hosts_and_usage_reports_it(
    gpusim_factory: Callable[..., Gpusim], hosts: Any
) -> None:
    """Output priced at 0.01 a token, cost_quota 5 a day: 20 concurrent requests of 100
    tokens generate at most 600, and GET /v1/usage reports between 4 and 6 spent."""
    sim = gpusim_factory(min_output_tokens=100, max_output_tokens=100, itl_ms=1)
    pair = hosts(sim, [{"caller": "*", "cost_quota": 5, "quota_period": "day"}],
                 price={"input_per_1m": 0, "output_per_1m": 10000})  # fmt: skip
    before = generated(sim)

    codes = _fan_out(pair, 20, _chat(100))
    made = generated(sim) - before
    assert made <= 600, (made, codes)
    refused = [c for c in codes if c != 200]
    assert refused and set(refused) == {429}
    usage = httpx2.get(f"{pair[1].url}/api/v1/usage", timeout=10).json()
    (rule,) = usage["limits"]
    spent = rule["cost_quota"]["spent"]
    print(f"cost_quota 5: {made} generated, usage reports {spent} spent")
    assert 4 <= spent <= 6, usage
    assert rule["cost_quota"]["limit"] == 5 and rule["cost_quota"]["period"] == "day"
    assert spent == codes.count(200) * 1.0  # 100 output tokens at 0.01 each, exactly
    body = {"model": "local-model", "messages": PROMPT, "max_tokens": 100}
    over = httpx2.post(f"{pair[0].url}/api/v1/chat/completions", json=body, timeout=10)
    assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"
