"""Limits through the functions: headers, 429s the openai SDK retries, streams charged by
their usage, queue jobs deferred and batch lines slowed instead of failed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from functions.chat.app import app as chat_app
from shared.context import Context
from shared.lifecycle import reset_all
from shared.schemas import Operation
from tests.fixtures.core import Handler, chat_answer, sse

#: 36 characters: 13 prompt tokens, plus 20 max_tokens reserved: 33 at admission
MSG = {"model": "local-model", "messages": [{"role": "user", "content": "x" * 36}],
       "max_tokens": 20}  # fmt: skip

EVENT_STREAM = {"content-type": "text/event-stream"}


def client() -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=chat_app)  # type: ignore[arg-type]
    return httpx2.AsyncClient(transport=transport, base_url="http://fn")


@pytest.fixture(params=["memory", "redis"])
def limits_env(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    if request.param == "redis":
        clean_env.setenv("INFER_STATE_URL", request.getfixturevalue("redis_url"))
        clean_env.setenv("INFER_STATE_TIMEOUT_S", "5")  # a loaded machine must not fail open
    reset_all()
    return clean_env


def _limits(env: pytest.MonkeyPatch, *rules: dict[str, Any]) -> None:
    env.setenv("INFER_LIMITS", json.dumps(list(rules)))
    reset_all()


async def test_admitted_answers_carry_openai_rate_headers(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    # a day-long window: the bucket refills too slowly to blur the exact counts below
    _limits(limits_env, {"caller": "*", "rpm": 5, "tpm": 1000, "window_s": 86400})
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    async with client() as c:
        r = await c.post("/v1/chat/completions", json=MSG)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert r.headers["x-ratelimit-remaining-requests"] == "4"
        assert r.headers["x-ratelimit-reset-requests"] == "4h48m0s"  # one request: 86400 s / 5
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 33)
        r = await c.post("/v1/chat/completions", json=MSG)
        # the first answer's real usage (4 tokens) replaced its reservation (13 + 20)
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 4 - 33)


async def test_refusal_is_a_429_the_openai_sdk_retries_after(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    _limits(limits_env, {"caller": "*", "rpm": 1, "window_s": 1})
    calls: list[float] = []

    def answer(req: httpx2.Request) -> httpx2.Response:
        calls.append(time.monotonic())
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(answer)
    async with client() as c:
        assert (await c.post("/v1/chat/completions", json=MSG)).status_code == 200
        r = await c.post("/v1/chat/completions", json=MSG)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.headers["retry-after"] == "1"
        assert 0 < int(r.headers["retry-after-ms"]) <= 1000
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        sdk = openai.AsyncOpenAI(api_key="unused", base_url="http://fn/v1", http_client=c)
        started = time.monotonic()
        out = await sdk.chat.completions.create(**MSG)  # type: ignore[call-overload]
        assert out.choices[0].message.content == "hello"
        # the SDK was refused at least once and waited the Retry-After it was given
        assert time.monotonic() - started >= 0.2
    assert len(calls) == 2  # refusals never reached the endpoint


async def test_a_stream_is_charged_its_usage_chunk_and_frees_its_slot(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    _limits(limits_env, {"caller": "*", "tpm": 1000, "max_parallel": 1, "window_s": 86400})
    usage = {"prompt_tokens": 13, "completion_tokens": 87, "total_tokens": 100}
    body = sse(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"id": "c", "choices": [], "usage": usage},
        "[DONE]",
    )
    fake_endpoint(
        lambda req: httpx2.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )
    stream = {**MSG, "stream": True, "stream_options": {"include_usage": True}}
    async with client() as c:
        r = await c.post("/v1/chat/completions", json=stream)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 33)
        r = await c.post("/v1/chat/completions", json=stream)  # slot released: admitted
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 100 - 33)


async def test_a_stream_without_usage_is_charged_its_reservation(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    _limits(limits_env, {"caller": "*", "tpm": 1000, "window_s": 86400})
    asked: list[Any] = []
    events = [{"id": "c", "choices": [{"index": 0, "delta": {"content": "t"}}]}] * 20
    body = sse(*events, "[DONE]")

    def answer(req: httpx2.Request) -> httpx2.Response:
        asked.append(json.loads(req.content).get("stream_options"))
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    fake_endpoint(answer)
    async with client() as c:
        await c.post("/v1/chat/completions", json={**MSG, "stream": True})
        r = await c.post("/v1/chat/completions", json={**MSG, "stream": True})
        # no usage came: the first stream is charged its whole reservation (13 + 20), not
        # a guess from its content events
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 33 - 33)
    assert asked[0] == {"include_usage": True}  # the endpoint is always asked for usage


async def test_usage_the_caller_did_not_ask_for_is_charged_but_not_sent(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    _limits(limits_env, {"caller": "*", "tpm": 1000, "window_s": 86400})
    usage = {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}
    body = sse(
        {"id": "c", "choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c", "choices": [], "usage": usage},
        "[DONE]",
    )
    fake_endpoint(
        lambda req: httpx2.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )
    async with client() as c:
        first = await c.post("/v1/chat/completions", json={**MSG, "stream": True})
        assert '"usage"' not in first.text and first.text.endswith("data: [DONE]\n\n")
        r = await c.post("/v1/chat/completions", json={**MSG, "stream": True})
        assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 20 - 33)


async def test_a_throttled_job_is_deferred_by_the_retry_after_not_failed(
    job_env: Path, fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch
) -> None:
    from shared.jobs.model import JobRecord, parse_line
    from shared.jobs.store import get_job_store
    from shared.jobs.worker import Attempt, process_message

    clean_env.setenv("INFER_LIMITS", json.dumps([{"caller": "team-a", "rpm": 1}]))
    reset_all()
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    for job_id in ("job-1", "job-2"):
        line = parse_line({"id": job_id, "url": "/v1/chat/completions", "body": MSG})
        get_job_store().create(JobRecord.new(line, job_id, caller="team-a"))
    first = json.dumps({"id": "job-1", "url": "/v1/chat/completions", "body": MSG}).encode()
    second = json.dumps({"id": "job-2", "url": "/v1/chat/completions", "body": MSG}).encode()
    assert (await process_message(first, Attempt(1, 5), Context.with_timeout(10))).action == "ack"
    out = await process_message(second, Attempt(1, 5), Context.with_timeout(10))
    assert out.action == "defer" and out.status == "queued"
    assert out.delay_s is not None and 55 <= out.delay_s <= 60
    # an anonymous job (no rule names it) is not limited
    other = json.dumps({"id": "job-3", "url": "/v1/chat/completions", "body": MSG}).encode()
    assert (await process_message(other, Attempt(1, 5), Context.with_timeout(10))).action == "ack"


async def test_a_batch_slows_to_the_callers_limit_instead_of_failing_lines(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch, memory_stores: Any
) -> None:
    from shared.batch.config import BatchSettings
    from shared.batch.runner import Batch
    from shared.service import get_service
    from tests.fixtures.batch import make_input, read_jsonl

    clean_env.setenv(
        "INFER_LIMITS", json.dumps([{"caller": "batch-team", "rpm": 20, "window_s": 1}])
    )
    reset_all()
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    data, good, bad = make_input(40)
    memory_stores.inp.put("lim.jsonl", data, content_type="application/jsonl")
    settings = BatchSettings(
        checkpoint_s=0.05, status_s=0.05, handoff_margin_s=0.2, caller="batch-team",
        line_retries=0,
    )  # fmt: skip
    b = Batch(stores=memory_stores, service=get_service(), send=lambda m: None, settings=settings)
    started = time.monotonic()
    outcome = await b.start("batch-in/lim.jsonl", Context.with_timeout(30))
    assert "completed" in outcome
    out = read_jsonl(memory_stores.out.get("lim.output.jsonl").data)
    err = read_jsonl(memory_stores.out.get("lim.errors.jsonl").data)
    assert len(out) == len(good) and len(err) == bad  # no line failed for the limit
    # 40 lines at 20 per second, from a full bucket of 20: at least a second
    assert time.monotonic() - started >= 0.9


async def test_a_cache_hit_costs_no_tokens_but_counts_as_a_request(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    limits_env.setenv("INFER_CACHE", json.dumps({"mode": "exact"}))
    _limits(limits_env, {"caller": "*", "rpm": 10, "tpm": 1000, "window_s": 86400})
    calls: list[int] = []

    def answer(req: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        return httpx2.Response(200, json=chat_answer("local-model"))

    fake_endpoint(answer)
    async with client() as c:
        miss = await c.post("/v1/chat/completions", json=MSG)
        assert miss.headers["x-cache"] == "miss"
        hit = await c.post("/v1/chat/completions", json=MSG)
        assert hit.headers["x-cache"] == "hit"
        assert hit.headers["x-ratelimit-remaining-requests"] == "8"
        after = await c.post("/v1/chat/completions", json=MSG)
        # the miss was charged its usage (4); the hit's reservation (33) was refunded
        assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - 4 - 33)
    assert len(calls) == 1


async def test_a_stream_closed_before_its_first_chunk_frees_its_slot(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    from shared.limits import CallerRateLimited
    from shared.service import get_service

    _limits(limits_env, {"caller": "*", "max_parallel": 1, "tpm": 1000, "window_s": 86400})
    body = sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}, "[DONE]")
    fake_endpoint(
        lambda req: httpx2.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )
    service = get_service()
    payload = service.validate(Operation.CHAT, {**MSG, "stream": True})
    for _ in range(5):  # the caller went away before reading anything
        opened = await service.stream(Operation.CHAT, payload, Context.with_timeout(10))
        with pytest.raises(CallerRateLimited):  # its slot is still held while open
            await service.stream(Operation.CHAT, payload, Context.with_timeout(10))
        await opened.aclose()
    ctx = Context.with_timeout(10)
    again = await service.stream(Operation.CHAT, payload, ctx)
    await again.aclose()
    # the endpoint reported no usage for them: each closed stream is charged its
    # reservation (13 + 20), the most it could have cost
    assert ctx.response_headers["x-ratelimit-remaining-tokens"] == str(1000 - 5 * 33 - 33)


async def test_model_names_are_bounded_and_unknown_models_touch_no_counter(
    limits_env: pytest.MonkeyPatch, fake_endpoint: Callable[[Handler], None]
) -> None:
    limits_env.setenv("INFER_BACKENDS", json.dumps(
        [{"name": "b", "kind": "openai", "base_url": "http://127.0.0.1:8081/v1",
          "models": ["local-model"]}]))  # fmt: skip
    _limits(limits_env, {"caller": "*", "model": "*", "rpm": 5})
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    async with client() as c:
        long = await c.post("/v1/chat/completions", json={**MSG, "model": "m" * 257})
        assert long.status_code == 400 and long.json()["error"]["param"] == "model"
        spaced = await c.post("/v1/chat/completions", json={**MSG, "model": "a model"})
        assert spaced.status_code == 400
        unknown = await c.post("/v1/chat/completions", json={**MSG, "model": "nope"})
        assert unknown.status_code == 404 and "x-ratelimit-limit-requests" not in unknown.headers
        ok = await c.post("/v1/chat/completions", json=MSG)
        assert ok.headers["x-ratelimit-remaining-requests"] == "4"


async def test_a_batchs_status_carries_what_it_cost(
    fake_endpoint: Callable[[Handler], None], clean_env: pytest.MonkeyPatch, memory_stores: Any
) -> None:
    from shared.batch.config import BatchSettings
    from shared.batch.runner import Batch
    from shared.service import get_service
    from tests.fixtures.batch import make_input

    backend = {"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8081/v1",
               "price": {"input_per_1m": 0, "output_per_1m": 500_000}}  # fmt: skip
    clean_env.setenv("INFER_BACKENDS", json.dumps([backend]))
    reset_all()
    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    data, good, _ = make_input(10)
    memory_stores.inp.put("priced.jsonl", data, content_type="application/jsonl")
    settings = BatchSettings(checkpoint_s=0.05, status_s=0.05, handoff_margin_s=0.2)
    b = Batch(stores=memory_stores, service=get_service(), send=lambda m: None, settings=settings)
    assert "completed" in await b.start("batch-in/priced.jsonl", Context.with_timeout(30))
    status = json.loads(memory_stores.out.get("priced.status.json").data)
    assert status["cost"] == len(good) * 0.5  # one completion token at 0.5 each line
