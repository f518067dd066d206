"""The exact cache across two devhost processes (ports A and B) sharing one Redis.

Debian's redis-server, gpusim behind both hosts, the official openai SDK as the client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e
KEYS = ["key-alpha-0123456789", "key-beta-0123456789"]
MSGS = [{"role": "user", "content": "Name three uses of a GPU."}]


@pytest.fixture
def hosts(
    gpusim: Gpusim, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[DevhostProcess]]:
    backends = [{"name": "sim", "kind": "openai", "base_url": gpusim.v1}]
    env = {
        "INFER_BACKENDS": json.dumps(backends),
        "INFER_CACHE": json.dumps({"mode": "exact", "ttl_s": 60}),
        "INFER_STATE_URL": redis_url,
        "INFER_API_KEYS": ",".join(KEYS),
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path_factory.mktemp("devhost-cache")
    started: list[DevhostProcess] = []
    for name in ("a", "b"):
        port = free_port()
        argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
                "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
        proc = DevhostProcess(
            argv, port, ready_path="/api/healthz", env=env, name=f"devhost-cache-{name}",
            log_path=logs / f"{name}.log",
        )  # fmt: skip
        started.append(proc.start())
    yield started
    for proc in started:
        proc.stop()


def post(host: DevhostProcess, key: str = KEYS[0], cache_control: str = "") -> httpx2.Response:
    body = {"model": "local-model", "messages": MSGS, "max_tokens": 16}
    headers = {"authorization": f"Bearer {key}"}
    if cache_control:
        headers["cache-control"] = cache_control
    r = httpx2.post(f"{host.url}/api/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def chat_calls(sim: Gpusim) -> int:
    return sum(sim.stats()["requests"].get("/v1/chat/completions", {}).values())


def test_a_repeat_on_the_other_host_is_an_identical_hit(
    hosts: list[DevhostProcess], gpusim: Gpusim
) -> None:
    a, b = hosts
    first = post(a)
    repeat = post(b)
    assert first.headers["x-cache"] == "miss" and repeat.headers["x-cache"] == "hit"
    assert repeat.content == first.content
    assert post(a).content == first.content
    assert chat_calls(gpusim) == 1


def test_another_caller_gets_no_hit(hosts: list[DevhostProcess], gpusim: Gpusim) -> None:
    a, b = hosts
    post(a, KEYS[0])
    assert post(b, KEYS[1]).headers["x-cache"] == "miss"
    assert chat_calls(gpusim) == 2


def test_no_cache_asks_the_endpoint(hosts: list[DevhostProcess], gpusim: Gpusim) -> None:
    a, b = hosts
    post(a)
    refreshed = post(b, cache_control="no-cache")
    assert refreshed.headers["x-cache"] == "miss" and chat_calls(gpusim) == 2
    assert post(a).content == refreshed.content  # stored, then served from the cache
    assert post(b, cache_control="no-store").headers["x-cache"] == "bypass"
    assert chat_calls(gpusim) == 3


def test_a_streamed_hit_is_a_multi_chunk_stream_with_usage(
    hosts: list[DevhostProcess], gpusim: Gpusim
) -> None:
    clients = [
        openai.OpenAI(base_url=h.url + "/api/v1", api_key=KEYS[0], max_retries=0) for h in hosts
    ]

    def stream(client: openai.OpenAI) -> tuple[str, list[str], object]:
        chunks = list(
            client.chat.completions.create(
                model="local-model", messages=MSGS, max_tokens=16,  # type: ignore[arg-type]
                stream=True, stream_options={"include_usage": True},
            )
        )  # fmt: skip
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        return "".join(pieces), [p for p in pieces if p], chunks[-1].usage

    miss_text, _, miss_usage = stream(clients[0])
    raw = clients[1].chat.completions.with_raw_response.create(
        model="local-model", messages=MSGS, max_tokens=16,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    assert raw.headers["x-cache"] == "hit"
    raw.http_response.close()
    hit_text, hit_pieces, hit_usage = stream(clients[1])
    assert hit_text == miss_text and len(hit_pieces) >= 3
    assert hit_usage is not None and hit_usage == miss_usage
    assert chat_calls(gpusim) == 1
