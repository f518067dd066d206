"""Limits hold across instances: two devhost processes share one real Redis.

A caller with a ``tpm`` limit sends alternately to both hosts. It is admitted at most its
limit, plus one request's tokens (plus what the bucket refilled meanwhile); refusals are 429
with Retry-After and ``x-ratelimit-*``; after waiting the Retry-After it was told it is
admitted again; another caller is never refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e

TPM = 200
WINDOW_S = 6.0  # a short window keeps the test fast: 200 tokens per 6 s
KEYS = [{"id": "team-a", "key": "key-of-team-a"}, {"id": "team-b", "key": "key-of-team-b"}]
BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Write one sentence about GPUs."}],
    "max_tokens": 16,
}


def _host(sim: Gpusim, redis_url: str, name: str) -> DevhostProcess:
    port = free_port()
    backends = [{"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]}]
    env = {
        "INFER_BACKENDS": json.dumps(backends),
        "INFER_API_KEYS": json.dumps(KEYS),
        "INFER_LIMITS": json.dumps([{"caller": "team-a", "tpm": TPM, "window_s": WINDOW_S}]),
        "INFER_STATE_URL": redis_url,
        "INFER_MAX_RETRIES": "0",
        "INFER_STATE_TIMEOUT_S": "5",  # a loaded test machine must not fail open
        "PYTHONUNBUFFERED": "1",
    }
    argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
            "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
    return DevhostProcess(argv, port, ready_path="/api/healthz", env=env, name=name).start()


@pytest.fixture
def hosts(gpusim_server: Gpusim, redis_url: str) -> Iterator[tuple[DevhostProcess, ...]]:
    first = _host(gpusim_server, redis_url, "devhost-lim-1")
    try:
        second = _host(gpusim_server, redis_url, "devhost-lim-2")
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def _send(host: DevhostProcess, key: str) -> httpx2.Response:
    return httpx2.post(
        f"{host.url}/api/v1/chat/completions",
        json=BODY,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_tpm_limit_holds_across_two_hosts_sharing_redis(
    hosts: tuple[DevhostProcess, DevhostProcess],
) -> None:
    admitted_tokens: list[int] = []
    refusals: list[httpx2.Response] = []
    first_at = last_at = 0.0
    for i in range(40):
        host = hosts[i % 2]
        r = _send(host, "key-of-team-a")
        other = _send(hosts[(i + 1) % 2], "key-of-team-b")
        assert other.status_code == 200, other.text  # another caller is never refused
        if r.status_code == 200:
            if not admitted_tokens:
                first_at = time.monotonic()
            last_at = time.monotonic()
            admitted_tokens.append(r.json()["usage"]["total_tokens"])
            assert r.headers["x-ratelimit-limit-tokens"] == str(TPM)
            continue
        refusals.append(r)
        if len(refusals) >= 4:
            break
    assert len(refusals) >= 4, "the limit was never reached"
    for r in refusals:
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-tokens"] == str(TPM)
        # less is left than this request's reservation: its estimated prompt (12 tokens)
        # plus its max_tokens (16)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < 12 + 16
        assert r.headers["x-ratelimit-reset-tokens"]
    # both hosts admitted and refused: the counter is shared, not per instance
    biggest = max(admitted_tokens)
    refill = TPM * (last_at - first_at) / WINDOW_S
    assert sum(admitted_tokens) <= TPM + biggest + refill, (admitted_tokens, refill)
    assert sum(admitted_tokens) > TPM / 2
    # the Retry-After it was told is enough: wait it, then it is admitted (on either host)
    wait_s = int(refusals[-1].headers["retry-after"])
    assert wait_s <= WINDOW_S
    time.sleep(wait_s)
    again = _send(hosts[0], "key-of-team-a")
    assert again.status_code == 200, again.text
