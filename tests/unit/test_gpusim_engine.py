"""gpusim engine: admission, FIFO queue, overload, latency formulas, completion accounting."""

from __future__ import annotations

import asyncio
import time

import pytest

from tools.gpusim.config import Config
from tools.gpusim.engine import ContextTooLong, Engine, GenerationRequest, Overloaded


def engine(**knobs: object) -> Engine:
    base: dict[str, object] = {"ttft_base_ms": 0.0, "prefill_ms_per_token": 0.0, "itl_ms": 0.0,
                               "min_output_tokens": 5, "max_output_tokens": 5}  # fmt: skip
    return Engine(Config(**{**base, **knobs}))  # type: ignore[arg-type]


def req(prompt: str = "p", **kw: object) -> GenerationRequest:
    return GenerationRequest(model="m", prompt=prompt, prompt_tokens=1, **kw)  # type: ignore[arg-type]


async def test_overloaded_when_batch_and_queue_are_full() -> None:
    e = engine(max_num_seqs=1, max_waiting=1, retry_after=2.5)
    async with e.slot():
        waiter = asyncio.create_task(e.slot().__aenter__())
        await asyncio.sleep(0)
        assert (e.running, e.waiting) == (1, 1)
        with pytest.raises(Overloaded) as info:
            async with e.slot():
                pass
        assert info.value.retry_after == 2.5
    await waiter  # admitted once the slot was released
    assert (e.running, e.waiting, e.peak_running, e.peak_waiting) == (1, 0, 1, 1)


async def test_waiters_are_admitted_in_arrival_order() -> None:
    e = engine(max_num_seqs=1, max_waiting=10)
    order: list[int] = []

    async def one(i: int) -> None:
        async with e.slot():
            order.append(i)
            await asyncio.sleep(0)

    async with e.slot():
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)
        assert e.waiting == 5
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (e.running, e.waiting) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    e = engine(max_num_seqs=1, max_waiting=1)
    async with e.slot():
        waiter = asyncio.create_task(e.slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert e.waiting == 0
    assert e.running == 0


async def test_waiter_cancelled_just_after_handover_gives_the_slot_back() -> None:
    e = engine(max_num_seqs=1, max_waiting=1)
    holder = e.slot()
    await holder.__aenter__()
    waiter = asyncio.create_task(e.slot().__aenter__())
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (e.running, e.waiting) == (0, 0)


def test_latency_formulas_follow_the_knobs() -> None:
    e = engine(ttft_base_ms=30, prefill_ms_per_token=0.5, itl_ms=10, batch_slowdown=1.0,
               max_num_seqs=4, time_scale=0.5)  # fmt: skip
    assert e.ttft_seconds(100) == pytest.approx((30 + 50) * 0.5 / 1000)
    assert e.itl_seconds() == pytest.approx(10 * 0.5 / 1000)
    e.running = 4
    assert e.itl_seconds() == pytest.approx(10 * 2 * 0.5 / 1000)
    e.running = 2
    assert e.itl_seconds() == pytest.approx(10 * 1.5 * 0.5 / 1000)


def test_context_longer_than_max_model_len_is_refused() -> None:
    e = engine(max_model_len=100)
    e.check_context(90, 10)
    with pytest.raises(ContextTooLong, match="maximum context length is 100"):
        e.check_context(90, 11)


async def test_complete_counts_tagged_generation_and_tokens() -> None:
    e = engine()
    result = await e.complete(req(tag="job-1", max_tokens=3))
    assert (result.completion_tokens, result.finish_reason) == (3, "length")
    assert result.text == e.plan(req(max_tokens=3)).text
    assert e.metrics.stat_generations == {"job-1": 1}
    assert e.metrics.generation_tokens["m"] == 3 and e.metrics.prompt_tokens["m"] == 1
    assert e.running == 0


async def test_generation_left_early_is_aborted_not_completed() -> None:
    e = engine()
    async with e.generate(req(tag="t")) as gen:
        async for _ in gen:
            break
        assert gen.finish_reason is None and e.running == 1
    assert e.running == 0
    assert e.metrics.stat_completed == 0 and e.metrics.finished[("m", "abort")] == 1


async def test_full_batch_throughput_matches_the_formula() -> None:
    # 4 seqs, ITL 3 ms * (1 + 1.0 * 4/4) = 6 ms; 30 tokens each: >= 29 * 6 ms = 174 ms.
    e = engine(max_num_seqs=4, itl_ms=3, batch_slowdown=1.0, min_output_tokens=30,
               max_output_tokens=30)  # fmt: skip
    start = time.monotonic()
    results = await asyncio.gather(*(e.complete(req(f"p{i}")) for i in range(4)))
    elapsed = time.monotonic() - start
    assert all(r.completion_tokens == 30 for r in results)
    assert 0.174 * 0.9 <= elapsed < 0.174 * 4


async def test_embed_is_admitted_and_counted() -> None:
    e = engine(embedding_dim=8)
    vectors, tokens = await e.embed("m", ["a b", "c"], tag="emb", dimensions=4)
    assert tokens == 3 and [len(v) for v in vectors] == [4, 4]
    assert e.metrics.stat_generations == {"emb": 1} and e.running == 0


def test_vary_answers_gives_each_call_new_text() -> None:
    fixed, varying = engine(max_output_tokens=40), engine(max_output_tokens=40, vary_answers=True)
    assert len({fixed.plan(req("same")).text for _ in range(5)}) == 1
    texts = [varying.plan(req("same")).text for _ in range(5)]
    assert len(set(texts)) == 5
    seeded = [varying.plan(req("same", seed=7)).text for _ in range(3)]
    assert len(set(seeded)) == 3
    # reproducible across processes: a fresh engine gives the same sequence
    again = engine(max_output_tokens=40, vary_answers=True)
    assert [again.plan(req("same")).text for _ in range(5)] == texts
