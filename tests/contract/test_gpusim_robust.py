"""gpusim under hostile input: nothing blocks its event loop, limits answer 4xx, SIGTERM works.

Every other test and benchmark depends on gpusim answering; one request must never be able
to stop it serving the rest (a 100,000-input embeddings request once pinned it for 40 s).
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import httpx2

from tests.fixtures.devhost import wait_for
from tests.fixtures.gpusim import Gpusim

CHAT = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_limits_answer_400_or_413_not_a_stall(gpusim: Gpusim) -> None:
    with httpx2.Client(base_url=gpusim.v1, timeout=30) as client:
        r = client.post("/embeddings", json={"model": "local-model", "input": ["x"] * 100_000})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = client.post("/embeddings", json={"model": "local-model", "input": ["a", ""]})
        assert r.status_code == 400
        r = client.post(
            "/embeddings", json={"model": "local-model", "input": "a", "dimensions": 10**9}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
        deep = b"[" * 100_000 + b"]" * 100_000
        r = client.post("/chat/completions", content=deep)
        assert r.status_code == 400
        r = client.post("/chat/completions", json={**CHAT, "messages": [{"role": "wizard"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert client.post("/chat/completions", json=CHAT).status_code == 200


def test_a_normal_request_is_served_while_a_big_one_is_in_flight(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    # 2,048 inputs x 4,096 dimensions: seconds of CPU in gpusim, all of it off the loop.
    sim = gpusim_factory(embedding_dim=4096, prefill_ms_per_token=0)  # compute at once
    big = {"model": "local-model", "input": [f"text {i} " * 50 for i in range(2048)]}
    outcome: dict[str, Any] = {}

    def hostile() -> None:
        with httpx2.Client(timeout=300) as client:
            r = client.post(sim.v1 + "/embeddings", json=big)
            outcome["status"] = r.status_code
            outcome["n"] = len(r.json()["data"])

    worker = threading.Thread(target=hostile)
    worker.start()
    try:
        wait_for(lambda: sim.stats()["running"] >= 1, timeout=60)
        served_during = 0
        with httpx2.Client(base_url=sim.v1, timeout=30) as client:
            while worker.is_alive() and served_during < 3:
                r = client.post("/chat/completions", json=CHAT)
                assert r.status_code == 200
                # Answered while the embedding still holds its engine slot: the loop was free.
                served_during += sim.stats()["running"] >= 1
        assert served_during >= 1
    finally:
        worker.join(timeout=300)
    assert outcome == {"status": 200, "n": 2048}


def test_sigterm_stops_it_promptly_with_requests_open(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    # Streams of 100 tokens at one token a second: open for ~100 s unless shutdown ends them.
    sim = gpusim_factory(
        itl_ms=1000, min_output_tokens=100, max_output_tokens=100, shutdown_grace_s=1
    )
    proc = sim.server.proc
    assert proc is not None

    def stream() -> None:
        try:
            with httpx2.stream(
                "POST", sim.v1 + "/chat/completions", json={**CHAT, "max_tokens": 100,
                                                            "stream": True}, timeout=150
            ) as r:  # fmt: skip
                for _ in r.iter_bytes():
                    pass
        except httpx2.HTTPError:
            pass

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: sim.stats()["running"] >= 3, timeout=30)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)  # before: it waited for every stream to end
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("gpusim ignored SIGTERM with requests open") from None
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
