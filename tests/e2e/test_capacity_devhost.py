"""A backend's ``max_concurrency`` holds across instances: devhost processes share one Redis.

- Three hosts, one endpoint with ``max_concurrency`` 4, 72 concurrent callers spread over the
  hosts: the endpoint never has more than 4 requests running, every caller is answered, and
  the run takes at most twice the ideal time (18 rounds of one request each).
- A host killed with SIGKILL while it holds every slot: the slots come back within the lease
  (``INFER_CAPACITY_LEASE_S``), and the other host's waiting caller is then served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import redis

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e

CAP = 4
CALLERS = 72
LEASE_S = 2.0
BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Write one sentence about GPUs."}],
    "max_tokens": 16,
}


def _host(sim: Gpusim, redis_url: str, name: str) -> DevhostProcess:
    port = free_port()
    backends = [{"name": "gpu", "kind": "openai", "base_url": sim.v1, "models": ["local-model"],
                 "max_concurrency": CAP}]  # fmt: skip
    env = {
        "INFER_BACKENDS": json.dumps(backends),
        "INFER_STATE_URL": redis_url,
        "INFER_STATE_TIMEOUT_S": "5",  # a loaded test machine must not fall back
        "INFER_CAPACITY_LEASE_S": str(LEASE_S),
        "INFER_MAX_RETRIES": "0",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
            "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
    return DevhostProcess(argv, port, ready_path="/api/healthz", env=env, name=name).start()


@pytest.fixture
def sim(gpusim_factory: object) -> Gpusim:
    # every request: 16 tokens, about 0.2 s; the endpoint itself could run 64 at once
    return gpusim_factory(  # type: ignore[operator,no-any-return]
        ttft_base_ms=20, itl_ms=10, min_output_tokens=16, max_output_tokens=16, batch_slowdown=0
    )


def _hosts(sim: Gpusim, redis_url: str, n: int) -> Iterator[list[DevhostProcess]]:
    hosts: list[DevhostProcess] = []
    try:
        for i in range(n):
            hosts.append(_host(sim, redis_url, f"devhost-cap-{i + 1}"))
        yield hosts
    finally:
        for h in hosts:
            h.stop()


@pytest.fixture
def three(sim: Gpusim, redis_url: str) -> Iterator[list[DevhostProcess]]:
    yield from _hosts(sim, redis_url, 3)


@pytest.fixture
def two(sim: Gpusim, redis_url: str) -> Iterator[list[DevhostProcess]]:
    yield from _hosts(sim, redis_url, 2)


def _chat(client: httpx2.Client, host: DevhostProcess) -> httpx2.Response:
    return client.post(f"{host.url}/api/v1/chat/completions", json=BODY, timeout=60)


def test_max_concurrency_holds_across_three_hosts_and_is_used(
    sim: Gpusim, three: list[DevhostProcess]
) -> None:
    with httpx2.Client() as client:
        for host in three:  # warm each host (first request imports and connects)
            assert _chat(client, host).status_code == 200
        started = time.monotonic()
        direct = client.post(f"{sim.v1}/chat/completions", json=BODY, timeout=30)
        one = time.monotonic() - started
        assert direct.status_code == 200
    sim.reset()
    limits = httpx2.Limits(max_connections=CALLERS, max_keepalive_connections=CALLERS)
    with httpx2.Client(limits=limits) as client, ThreadPoolExecutor(CALLERS) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda i: _chat(client, three[i % 3]), range(CALLERS)))
        took = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * CALLERS, answers[0].text
    stats = sim.stats()
    assert stats["peak_running"] <= CAP, stats
    assert stats["peak_running"] == CAP  # and the capacity was used
    ideal = CALLERS / CAP * one
    print(f"capacity: {CALLERS} callers on 3 hosts took {took:.2f}s, ideal {ideal:.2f}s")
    assert took <= 2 * ideal, f"{took:.2f}s against an ideal of {ideal:.2f}s"


def test_a_killed_hosts_slots_come_back_within_its_lease(
    sim: Gpusim, two: list[DevhostProcess], redis_url: str
) -> None:
    doomed, survivor = two
    store = redis.Redis.from_url(redis_url)
    key = "infer:cap:{gpu}"
    # CAP streams on the doomed host that stay open: their first token takes 60 s
    sim.set_fault("slow_first_token", CAP, delay_s=60)
    opened: list[httpx2.Response] = []
    client = httpx2.Client(timeout=90)
    streams = [
        client.stream("POST", f"{doomed.url}/api/v1/chat/completions",
                      json={**BODY, "stream": True})
        for _ in range(CAP)
    ]  # fmt: skip
    pool = ThreadPoolExecutor(CAP)
    for response in pool.map(lambda s: s.__enter__(), streams):
        opened.append(response)
    assert all(r.status_code == 200 for r in opened)
    deadline = time.monotonic() + 10
    while store.zcard(key) < CAP and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.zcard(key) == CAP
    time.sleep(LEASE_S)  # the leases were renewed meanwhile: the host is alive
    assert store.zcard(key) == CAP

    doomed.kill()
    killed = time.monotonic()
    answer = _chat(httpx2.Client(), survivor)
    waited = time.monotonic() - killed
    assert answer.status_code == 200, answer.text
    # held until the leases expired (at most LEASE_S after the last renewal), not longer
    assert waited <= LEASE_S + 1.5, waited
    pool.shutdown(wait=False, cancel_futures=True)
    client.close()
