"""A backend's own quota (its provider's tpm) is kept across instances, and traffic spills to
the next priority before the provider answers 429.

gpusim enforces a deployment rate limit as Azure OpenAI does (``--tpm``: prompt + max_tokens
charged on arrival, 429 beyond it, ``x-ratelimit-*`` on every answer).

- Declared: two devhost hosts share Redis; the primary's entry says ``tpm`` (a little under
  what the provider grants). 30 concurrent callers over both hosts: every one is answered,
  the provider never refuses one, the primary serves what its quota holds and the secondary
  the rest.
- Learned: an entry without ``tpm``; the provider's ``x-ratelimit-remaining-tokens`` says
  the next request would not fit, so it goes to the secondary instead of meeting a 429.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e

BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Write one sentence about GPUs."}],
    "max_tokens": 40,
}
PROVIDER_TPM = 700
DECLARED_TPM = 600


def _host(backends: list[dict[str, Any]], redis_url: str, name: str) -> DevhostProcess:
    port = free_port()
    env = {
        "INFER_BACKENDS": json.dumps(backends),
        "INFER_STATE_URL": redis_url,
        "INFER_STATE_TIMEOUT_S": "5",
        "INFER_MAX_RETRIES": "0",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
            "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
    return DevhostProcess(argv, port, ready_path="/api/healthz", env=env, name=name).start()


@pytest.fixture
def sims(gpusim_factory: Callable[..., Gpusim]) -> tuple[Gpusim, Gpusim]:
    primary = gpusim_factory(tpm=PROVIDER_TPM, min_output_tokens=8, max_output_tokens=8)
    secondary = gpusim_factory(min_output_tokens=8, max_output_tokens=8)
    return primary, secondary


def _backends(sims: tuple[Gpusim, Gpusim], tpm: int | None) -> list[dict[str, Any]]:
    primary, secondary = sims
    first: dict[str, Any] = {"name": "ptu", "kind": "openai", "base_url": primary.v1,
                             "models": ["local-model"], "priority": 0}  # fmt: skip
    if tpm:
        first["tpm"] = tpm
    second = {"name": "paygo", "kind": "openai", "base_url": secondary.v1,
              "models": ["local-model"], "priority": 1}  # fmt: skip
    return [first, second]


@pytest.fixture
def hosts(sims: tuple[Gpusim, Gpusim], redis_url: str) -> Iterator[list[DevhostProcess]]:
    made: list[DevhostProcess] = []
    try:
        for i in range(2):
            made.append(_host(_backends(sims, DECLARED_TPM), redis_url, f"devhost-quota-{i}"))
        yield made
    finally:
        for h in made:
            h.stop()


def _chat(client: httpx2.Client, host: DevhostProcess) -> httpx2.Response:
    return client.post(f"{host.url}/api/v1/chat/completions", json=BODY, timeout=30)


def test_a_declared_tpm_is_kept_across_hosts_and_spills_to_the_next_priority(
    sims: tuple[Gpusim, Gpusim], hosts: list[DevhostProcess]
) -> None:
    primary, secondary = sims
    with httpx2.Client() as client, ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda i: _chat(client, hosts[i % 2]), range(30)))
    assert [a.status_code for a in answers] == [200] * 30, answers[0].text
    served = {a.headers["x-infer-backend"] for a in answers}
    assert served == {"ptu", "paygo"}
    on_primary = sum(a.headers["x-infer-backend"] == "ptu" for a in answers)
    # each reserves its prompt estimate (12) + max_tokens (40): 600 holds 11 (+ refill)
    assert 8 <= on_primary <= 12, on_primary
    assert primary.stats()["quota_refused"] == 0  # the provider never had to say 429
    assert secondary.stats()["quota_refused"] == 0


def test_the_providers_remaining_tokens_are_learned_and_respected(
    sims: tuple[Gpusim, Gpusim], redis_url: str
) -> None:
    primary, _ = sims
    host = _host(_backends(sims, None), redis_url, "devhost-quota-learn")
    try:
        with httpx2.Client() as client:
            answers = [_chat(client, host) for _ in range(20)]
    finally:
        host.stop()
    assert [a.status_code for a in answers] == [200] * 20
    backends = [a.headers["x-infer-backend"] for a in answers]
    assert backends[0] == "ptu" and "paygo" in backends
    assert primary.stats()["quota_refused"] == 0, backends
