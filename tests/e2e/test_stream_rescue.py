"""Answers that survive a misbehaving endpoint, streams included: every gpusim fault, through
devhost, with a primary and two fallbacks, each gets the complete answer (or, for a content
policy refusal, a clean error), and the service answers normally afterwards.

The three gpusim instances share a seed, so each gives the same answer to the same prompt,
as replicas of one model would: a stream broken on one and continued on another is
compared, text and usage, with the answer no fault touched. ``middle`` refuses a partial
assistant message (a server without ``continue_final_message``) although its entry claims
continuation, so a recovery must pass it over for ``last``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim, start_gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e
MSG = [{"role": "user", "content": "Tell me about the river and the lantern."}]
TOKENS = 16
IDLE_S = 0.6
FIRST_TOKEN_S = 0.6
SIM = {"min_output_tokens": TOKENS, "max_output_tokens": TOKENS, "hang_s": 8}


@dataclass
class Sims:
    primary: Gpusim
    middle: Gpusim
    last: Gpusim
    host: DevhostProcess
    all: list[Gpusim] = field(default_factory=list)


@pytest.fixture(scope="module")
def sims() -> Iterator[Sims]:
    primary = start_gpusim(SIM, name="gpusim-primary")
    middle = start_gpusim({**SIM, "continue_final_message": False}, name="gpusim-middle")
    last = start_gpusim(SIM, name="gpusim-last")
    deadlines = {"headers_timeout_s": 2, "first_token_timeout_s": FIRST_TOKEN_S,
                 "idle_timeout_s": IDLE_S}  # fmt: skip
    backends = [
        {"name": "primary", "kind": "openai", "base_url": primary.v1, "priority": 0,
         "models": ["local-model"], **deadlines},
        {"name": "middle", "kind": "openai", "base_url": middle.v1, "priority": 1,
         "models": ["local-model"], "continuation": True, **deadlines},
        {"name": "last", "kind": "openai", "base_url": last.v1, "priority": 2,
         "models": ["local-model"], **deadlines},
    ]  # fmt: skip
    port = free_port()
    host = DevhostProcess(
        [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(ROOT),
         "--no-queues", "--no-blobs", "--no-timers"],
        port,
        ready_path="/api/healthz",
        env={"INFER_BACKENDS": json.dumps(backends), "INFER_MAX_RETRIES": "2",
             "INFER_AUTH_LEVEL": "ANONYMOUS", "PYTHONUNBUFFERED": "1"},
        name="devhost-rescue",
    ).start()  # fmt: skip
    found = Sims(primary, middle, last, host, [primary, middle, last])
    yield found
    host.stop()
    for sim in found.all:
        sim.close()
        sim.server.stop()


@pytest.fixture
def env(sims: Sims) -> Iterator[Sims]:
    for sim in sims.all:
        sim.clear_faults()
        sim.reset()
    yield sims
    for sim in sims.all:
        sim.clear_faults()


@dataclass
class Streamed:
    text: str
    usage: dict[str, Any] | None
    events: list[Any]
    done: bool
    error: dict[str, Any] | None
    backend: str
    ttft: float
    elapsed: float
    status: int


def stream(host: DevhostProcess, **extra: Any) -> Streamed:
    body = {"model": "local-model", "messages": MSG, "stream": True,
            "stream_options": {"include_usage": True}, **extra}  # fmt: skip
    started = time.monotonic()
    ttft = 0.0
    raw = b""
    url = host.url + "/api/v1/chat/completions"
    with httpx2.Client(timeout=30) as client, client.stream("POST", url, json=body) as r:
        status, backend = r.status_code, r.headers.get("x-infer-backend", "")
        for chunk in r.iter_bytes():
            if not ttft and b'"content":"' in chunk.replace(b'"content":""', b""):
                ttft = time.monotonic() - started
            raw += chunk
    elapsed = time.monotonic() - started
    if status != 200:
        return Streamed("", None, [], False, json.loads(raw)["error"], backend, 0, elapsed,
                        status)  # fmt: skip
    events: list[Any] = []
    for event in raw.decode().split("\n\n"):
        assert event == "" or event.startswith("data: "), f"not an SSE event: {event!r}"
        if event.startswith("data: "):
            events.append(event[6:] if event == "data: [DONE]" else json.loads(event[6:]))
    objects = [e for e in events if isinstance(e, dict)]
    error = next((e["error"] for e in objects if "error" in e), None)
    text = "".join(
        c["delta"].get("content") or ""
        for e in objects if "choices" in e for c in e["choices"]
    )  # fmt: skip
    usage = next((e["usage"] for e in objects if e.get("usage")), None)
    ids = {e["id"] for e in objects if e.get("choices")}
    assert len(ids) <= 1, f"one answer has one id: {ids}"
    return Streamed(text, usage, events, events[-1:] == ["[DONE]"], error, backend, ttft,
                    elapsed, status)  # fmt: skip


def reference(host: DevhostProcess) -> Streamed:
    clean = stream(host)
    assert clean.done and clean.error is None and clean.usage is not None
    assert clean.usage["completion_tokens"] == TOKENS
    return clean


def whole(got: Streamed, clean: Streamed) -> None:
    assert got.error is None, got.error
    assert got.text == clean.text
    assert got.done, "one uninterrupted stream ending in [DONE]"
    assert got.usage == clean.usage, "usage covers what the caller received"
    roles = [c for e in got.events if isinstance(e, dict)
             for c in e.get("choices", []) if "role" in c.get("delta", {})]  # fmt: skip
    assert len(roles) == 1


# fault posted to the primary -> the backend that opened the stream (x-infer-backend). The
# last two open the primary's circuit (a 429 with no Retry-After for 1 s; 503s while down),
# so they run last and wait for it to close.
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "cut after 5 tokens": ({"type": "midstream", "after": 5}, "primary"),
    "stall after 5 tokens": ({"type": "stall", "after": 5}, "primary"),
    "malformed event": ({"type": "malformed", "after": 5}, "primary"),
    "no [DONE]": ({"type": "no_done"}, "primary"),
    "reset before headers": ({"type": "reset"}, "primary"),
    "500 once": ({"type": "500"}, "primary"),
    "429 with Retry-After": ({"type": "429", "retry_after": 0.2}, "primary"),
    "context length": ({"type": "context_length"}, "middle"),
    "slow first token": ({"type": "slow_first_token", "delay_s": 3}, "primary"),
    "429 without Retry-After": ({"type": "429", "retry_after": None}, "middle"),
    "flapping": ({"type": "503", "for_s": 1.0, "retry_after": 0.05}, "middle"),
}
CHAT = "/v1/chat/completions"


def calls(sim: Gpusim) -> dict[str, int]:
    found: dict[str, int] = sim.stats()["requests"].get(CHAT, {})
    return found


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_gets_the_complete_answer(env: Sims, fault: str) -> None:
    clean = reference(env.host)
    assert clean.backend == "primary"
    spec, opened_on = FAULTS[fault]
    env.primary.http.post("/admin/faults", json=spec).raise_for_status()
    got = stream(env.host)
    whole(got, clean)
    assert got.backend == opened_on
    if "for_s" not in spec:  # the fault happened (it was consumed), not skipped
        assert env.primary.http.get("/admin/faults").json()["scheduled"] == []
    if fault == "stall after 5 tokens":  # the fault, the idle deadline, then the rest
        assert got.elapsed < IDLE_S + 2.0, got.elapsed
        # the stalled primary is abandoned; middle refuses to continue; last finishes
        assert calls(env.last).get("200") == 1 and calls(env.middle).get("400") == 1
    if fault == "slow first token":  # within 1 s of the fallback's own first token
        assert got.ttft < FIRST_TOKEN_S + 1.0, got.ttft
        assert calls(env.middle).get("200") == 1
    if spec["type"] in ("429", "503") and opened_on == "middle":
        time.sleep(1.1)  # the primary's circuit closes; it is healthy again and serves
        assert stream(env.host).backend == "primary"
    after = stream(env.host)  # answered normally afterwards
    assert after.text == clean.text and after.done


def test_a_content_policy_refusal_is_a_clean_error_with_the_reason(env: Sims) -> None:
    env.primary.set_fault("content_filter", count=1)
    got = stream(env.host)
    assert got.status == 400 and got.error is not None
    assert got.error["code"] == "content_filter"
    assert got.error["innererror"]["content_filter_result"]["violence"]["filtered"] is True
    calls = [sum(s.stats()["requests"].get("/v1/chat/completions", {}).values())
             for s in env.all]  # fmt: skip
    assert calls == [1, 0, 0], "never retried, never failed over"


def test_a_stream_that_cannot_be_continued_ends_with_an_error_and_no_done(env: Sims) -> None:
    for sim in env.all:
        sim.set_fault("midstream", count=-1, after=5)
    got = stream(env.host)
    assert got.error is not None and not got.done
    assert got.text and len(got.text) < len(reference_text(env))


def reference_text(env: Sims) -> str:
    for sim in env.all:
        sim.clear_faults()
    return reference(env.host).text


def test_an_answer_cut_mid_body_is_retried_not_returned(env: Sims) -> None:
    url, body = env.host.url + "/api/v1/chat/completions", {"model": "local-model", "messages": MSG}
    clean = httpx2.post(url, json=body, timeout=30).json()
    for kind in ("midstream", "malformed"):
        env.primary.set_fault(kind, count=1)
        r = httpx2.post(url, json=body, timeout=30)
        assert r.status_code == 200
        assert r.json()["choices"] == clean["choices"] and r.json()["usage"] == clean["usage"]
