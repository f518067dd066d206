"""gpusim speaks the OpenAI protocol exactly enough for the official SDK (sync, async, SSE)."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from tests.fixtures.gpusim import Gpusim

MODEL = "local-model"
HELLO = [{"role": "user", "content": "Say hello to the cluster"}]  # 5 words + 3 + 3 = 11


def client(sim: Gpusim, **kw: Any) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 10.0)
    return openai.OpenAI(base_url=sim.v1, api_key="unused", **kw)


def aclient(sim: Gpusim, **kw: Any) -> openai.AsyncOpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 10.0)
    return openai.AsyncOpenAI(base_url=sim.v1, api_key="unused", **kw)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; also checks every line is well formed."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][\w:]*(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?) (\S+)', line)
        assert match, f"bad metrics line: {line!r}"
        series[match.group(1)] = float(match.group(2))
    return series


# --- chat --------------------------------------------------------------------------------
def test_chat_returns_openai_completion_with_usage(gpusim: Gpusim) -> None:
    resp = client(gpusim).chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == MODEL
    assert abs(resp.created - time.time()) < 60
    choice = resp.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 11
    assert 4 <= resp.usage.completion_tokens <= 24  # the fixture's natural length range
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_ends_with_length(gpusim: Gpusim, limit_field: str) -> None:
    resp = client(gpusim).chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        **{limit_field: 2},
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 2
    assert len(re.findall(r"\w+|[^\w\s]", resp.choices[0].message.content or "")) == 2


def test_same_prompt_gives_same_text_and_request_seed_changes_it(gpusim: Gpusim) -> None:
    c = client(gpusim)

    def ask(**kw: Any) -> str:
        resp = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, **kw)  # type: ignore[arg-type]
        return resp.choices[0].message.content or ""

    first = ask()
    assert ask() == first
    assert ask(seed=7) == ask(seed=7)
    assert ask(seed=7) != first


def test_stop_sequence_cuts_the_text_before_it(gpusim: Gpusim) -> None:
    c = client(gpusim)
    prompt = [{"role": "user", "content": "write a long answer"}]
    full = c.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24)  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    words = text.split(" ")
    assert len(words) >= 4
    stop = " " + words[2]
    cut = c.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24, stop=[stop])  # type: ignore[arg-type]
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_stream_with_include_usage_has_exact_chunk_shape(gpusim: Gpusim) -> None:
    c = client(gpusim)
    plain = c.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {ch.created for ch in chunks} == {chunks[0].created}
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"}
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(ch.usage is None for ch in body)
    assert body[0].choices[0].delta.role == "assistant"
    finishing = [ch for ch in body if ch.choices[0].finish_reason is not None]
    assert len(finishing) == 1 and finishing[0] is body[-1]
    pieces = [ch.choices[0].delta.content for ch in body if ch.choices[0].delta.content]
    assert len(pieces) == last.usage.completion_tokens  # one token per chunk
    assert "".join(pieces) == plain.choices[0].message.content
    assert last.usage.prompt_tokens == 11


def test_stream_without_include_usage_has_no_usage_chunk(gpusim: Gpusim) -> None:
    chunks = list(
        client(gpusim).chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            max_tokens=3,
        )
    )
    assert all(ch.choices for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_async_client_streams_concurrently(gpusim: Gpusim) -> None:
    c = aclient(gpusim)

    async def one(i: int) -> str:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"question {i}"}],
            stream=True,
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream])

    texts = await asyncio.gather(*(one(i) for i in range(4)))
    plain = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "question 2"}]
    )
    assert texts[2] == plain.choices[0].message.content
    assert len(set(texts)) == 4
    await c.close()


# --- completions, embeddings, models -----------------------------------------------------
def test_completions_plain_and_stream_agree(gpusim: Gpusim) -> None:
    c = client(gpusim)
    plain = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=30)
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert plain.usage is not None and plain.usage.prompt_tokens == 4
    chunks = list(
        c.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == plain.choices[0].text
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason


def test_completions_default_max_tokens_is_16(gpusim: Gpusim) -> None:
    resp = httpx2.post(
        gpusim.v1 + "/completions",
        json={"model": MODEL, "prompt": "x", "min_tokens": 0},
    ).json()
    assert resp["usage"]["completion_tokens"] <= 16


def test_embeddings_are_deterministic_unit_vectors_in_float_and_base64(gpusim: Gpusim) -> None:
    c = client(gpusim)
    floats = c.embeddings.create(model=MODEL, input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    a, b = (d.embedding for d in floats.data)
    assert len(a) == 384 and math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)
    assert a != b
    assert floats.usage.prompt_tokens == 2 == floats.usage.total_tokens

    raw = c.embeddings.create(model=MODEL, input="alpha", encoding_format="base64")
    packed = base64.b64decode(raw.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert decoded == pytest.approx(a, abs=1e-6)

    # Without encoding_format the SDK asks for base64 and decodes it itself.
    sdk_default = c.embeddings.create(model=MODEL, input="alpha")
    assert sdk_default.data[0].embedding == pytest.approx(a, abs=1e-6)


def test_models_lists_served_names_and_retrieves_one(gpusim: Gpusim) -> None:
    c = client(gpusim)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("other-model")


def test_wildcard_accepts_any_model_name(gpusim_factory: Callable[..., Gpusim]) -> None:
    sim = gpusim_factory(models="served-a,*")
    c = client(sim)
    assert [m.id for m in c.models.list()] == ["served-a"]
    resp = c.chat.completions.create(model="anything/at-all", messages=HELLO)  # type: ignore[arg-type]
    assert resp.model == "anything/at-all"


# --- errors ------------------------------------------------------------------------------
def test_unknown_model_is_not_found_with_openai_envelope(gpusim: Gpusim) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gpusim).chat.completions.create(model="gpt-unknown", messages=HELLO)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert info.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "local-model"}',
        b'{"model": "local-model", "messages": []}',
        b'{"model": "local-model", "messages": [{"role": "user", "content": "x"}], "n": 2}',
        b'{"model": "local-model", "messages": [{"role": "user", "content": "x"}], '
        b'"max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
    ],
)
def test_invalid_requests_get_400_envelope(gpusim: Gpusim, body: bytes) -> None:
    r = httpx2.post(gpusim.v1 + "/chat/completions", content=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


def test_sdk_maps_400_to_bad_request(gpusim: Gpusim) -> None:
    with pytest.raises(openai.BadRequestError):
        client(gpusim).chat.completions.create(model=MODEL, messages=HELLO, n=3)  # type: ignore[arg-type]


def test_context_longer_than_max_model_len_is_400(gpusim: Gpusim) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 8192"):
        client(gpusim).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8182)  # type: ignore[arg-type]
    client(gpusim).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8181)  # type: ignore[arg-type]


def test_client_that_gives_up_mid_stream_frees_its_slot(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    sim = gpusim_factory(itl_ms=100)  # at least 3 more tokens: >= 300 ms left after the first
    stream = client(sim).chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-gpusim-tag": "gone"},
    )
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5
    while (stats := sim.stats())["requests"].get("/v1/chat/completions") != {"disconnected": 1}:
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    assert stats["running"] == 0 and stats["generations"] == {}


# --- faults ------------------------------------------------------------------------------
def test_scheduled_429_is_rate_limit_error_with_retry_after(gpusim: Gpusim) -> None:
    gpusim.set_fault("429", count=1, retry_after=2)
    c = client(gpusim)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    headers = info.value.response.headers
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "2000"
    assert info.value.code == "rate_limit_exceeded"
    c.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert gpusim.stats()["requests"]["/v1/chat/completions"] == {"200": 1, "429": 1}


def test_sdk_retries_through_scheduled_503s(gpusim: Gpusim) -> None:
    gpusim.set_fault("503", count=2, retry_after=0.01)
    resp = client(gpusim, max_retries=2).chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={"x-gpusim-tag": "job-503"},
    )
    assert resp.choices[0].message.content
    stats = gpusim.stats()
    assert stats["requests"]["/v1/chat/completions"] == {"200": 1, "503": 2}
    assert stats["generations"] == {"job-503": 1}  # the model really ran once


def test_forced_500_header_maps_to_internal_server_error(gpusim: Gpusim) -> None:
    with pytest.raises(openai.InternalServerError):
        client(gpusim).embeddings.create(
            model=MODEL, input="x", extra_headers={"x-gpusim-fail": "500"}
        )


def test_forced_reset_is_a_connection_error(gpusim: Gpusim) -> None:
    with pytest.raises(openai.APIConnectionError):
        client(gpusim).chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-gpusim-fail": "reset"},
        )
    assert gpusim.stats()["requests"]["/v1/chat/completions"] == {"reset": 1}


def test_midstream_fault_delivers_some_chunks_then_breaks(gpusim: Gpusim) -> None:
    received: list[str] = []
    stream = client(gpusim).chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-gpusim-fail": "midstream"},
    )
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            if chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 3  # --midstream-chunks 3 (outputs here have 4 tokens or more)


def test_timeout_fault_hangs_until_client_gives_up_and_frees_the_server(gpusim: Gpusim) -> None:
    c = client(gpusim, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-gpusim-fail": "timeout"},
        )
    assert time.monotonic() - started >= 0.3
    deadline = time.monotonic() + 5
    while gpusim.stats()["requests"].get("/v1/chat/completions") != {"timeout": 1}:
        assert time.monotonic() < deadline, gpusim.stats()
        time.sleep(0.02)


def test_timed_fault_window_then_recovery(gpusim: Gpusim) -> None:
    gpusim.set_fault("503", for_s=0.4)
    c = client(gpusim)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    time.sleep(0.45)
    c.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]


def test_fail_rate_one_fails_every_model_call_but_not_health(gpusim: Gpusim) -> None:
    gpusim.set_rate(1.0, ["500"])
    c = client(gpusim)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            c.completions.create(model=MODEL, prompt="x")
    assert httpx2.get(gpusim.url + "/health").status_code == 200
    assert [m.id for m in c.models.list()] == [MODEL]
    gpusim.clear_faults()
    c.completions.create(model=MODEL, prompt="x")


def test_tag_counts_only_completed_generations(gpusim: Gpusim) -> None:
    c = client(gpusim)
    tagged = {"x-gpusim-tag": "job-7"}
    for _ in range(2):
        c.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=tagged)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={**tagged, "x-gpusim-fail": "429"},
        )
    c.embeddings.create(model=MODEL, input="x", extra_headers={"x-gpusim-tag": "emb"})
    stats = gpusim.stats()
    assert stats["generations"] == {"job-7": 2, "emb": 1}
    gpusim.reset()
    assert gpusim.stats()["generations"] == {}


# --- capacity, metrics, latency ----------------------------------------------------------
async def test_fourth_concurrent_request_is_rejected_when_batch_and_queue_are_full(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    sim = gpusim_factory(
        max_num_seqs=2, max_waiting=1, itl_ms=15, min_output_tokens=20, max_output_tokens=20,
        retry_after=3,
    )  # fmt: skip
    c = aclient(sim)

    async def one(i: int) -> str:
        try:
            await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            )
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.response.headers["retry-after"] == "3"
            return "429"

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert sorted(results) == ["429", "ok", "ok", "ok"]
    stats = sim.stats()
    assert stats["peak_running"] == 2 and stats["peak_waiting"] == 1
    assert stats["running"] == 0 and stats["waiting"] == 0
    await c.close()


def test_metrics_parse_and_move_with_traffic(gpusim: Gpusim) -> None:
    label = 'model_name="local-model"'
    route = 'gpusim_requests_total{route="/v1/chat/completions",status="200"}'
    before = parse_metrics(gpusim.metrics())
    resp = client(gpusim).chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    after = parse_metrics(gpusim.metrics())
    assert resp.usage is not None

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert moved(f"vllm:prompt_tokens_total{{{label}}}") == resp.usage.prompt_tokens
    assert moved(f"vllm:generation_tokens_total{{{label}}}") == resp.usage.completion_tokens
    assert moved(route) == 1
    assert moved(f"vllm:time_to_first_token_seconds_count{{{label}}}") == 1
    assert moved(f"vllm:e2e_request_latency_seconds_count{{{label}}}") == 1
    assert after[f"vllm:num_requests_running{{{label}}}"] == 0
    assert after[f"vllm:num_requests_waiting{{{label}}}"] == 0
    buckets = [
        v for k, v in after.items() if k.startswith("vllm:e2e_request_latency_seconds_bucket")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == after[f"vllm:e2e_request_latency_seconds_count{{{label}}}"]


def _ttft_and_itl(c: openai.OpenAI, content: str) -> tuple[float, float]:
    start = time.perf_counter()
    stamps = []
    for ch in c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], stream=True
    ):
        if ch.choices and ch.choices[0].delta.content:
            stamps.append(time.perf_counter())
    return stamps[0] - start, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def test_latency_shape_ttft_grows_with_prompt_and_itl_with_batch(
    gpusim_factory: Callable[..., Gpusim],
) -> None:
    sim = gpusim_factory(
        ttft_base_ms=10, prefill_ms_per_token=1.0, itl_ms=4, batch_slowdown=8, max_num_seqs=4,
        min_output_tokens=12, max_output_tokens=12,
    )  # fmt: skip
    c = client(sim)
    short_ttft, lone_itl = _ttft_and_itl(c, "hi")  # ~ 10 + 7 ms
    long_ttft, _ = _ttft_and_itl(c, "word " * 300)  # ~ 10 + 306 ms
    assert long_ttft > 4 * short_ttft

    # Four concurrent streams: ITL = 4 * (1 + 8 * 4/4) = 36 ms against 4 * (1 + 8/4) = 12 ms.
    async def batch() -> list[float]:
        ac = aclient(sim)

        async def one(i: int) -> float:
            stamps = []
            stream = await ac.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"b{i}"}], stream=True
            )
            async for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    stamps.append(time.perf_counter())
            return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

        try:
            return list(await asyncio.gather(*(one(i) for i in range(4))))
        finally:
            await ac.close()

    batched_itl = min(asyncio.run(batch()))
    assert batched_itl > 1.8 * lone_itl
