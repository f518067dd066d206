"""The batch engine against in-memory stores and a fake endpoint (httpx MockTransport).

Checks the guarantees: every line ends in exactly one of output/errors, across hand-offs,
killed invocations, concurrent owners, shards and redelivered events.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from shared.batch.config import BatchSettings
from shared.batch.runner import Batch
from shared.batch.state import Stores, output_key, status_key
from shared.context import Context
from shared.service import get_service
from tests.fixtures.batch import chat_line, make_input, read_jsonl
from tests.fixtures.core import chat_answer

FAST = {"checkpoint_s": 0.02, "status_s": 0.02, "handoff_margin_s": 0.2}


class Endpoint:
    """Answers chat requests after ``delay``; prompts containing markers misbehave."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        text = body["messages"][0]["content"]
        self.calls[text] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if "reject" in text:
            err = {"error": {"message": "blocked", "type": "invalid_request_error",
                             "param": "prompt", "code": "content_filter"}}  # fmt: skip
            return httpx2.Response(400, json=err)
        if "flaky" in text and self.calls[text] <= 3:
            return httpx2.Response(429, headers={"retry-after": "0.01"}, json={"error": {}})
        if "down" in text:
            return httpx2.Response(500, json={"error": {"message": "gpu on fire"}})
        return httpx2.Response(200, json=chat_answer(body["model"], text.upper()))


@pytest.fixture
def endpoint(fake_endpoint: Callable[[Any], None], clean_env: pytest.MonkeyPatch) -> Endpoint:
    clean_env.setenv("INFER_MAX_RETRIES", "1")
    ep = Endpoint()
    fake_endpoint(ep)
    return ep


def batch(stores: Stores, sent: list[dict[str, Any]], **settings: Any) -> Batch:
    return Batch(
        stores=stores,
        service=get_service(),
        send=sent.append,
        settings=BatchSettings(**{**FAST, **settings}),
    )


def upload(stores: Stores, name: str, data: bytes) -> None:
    stores.inp.put(f"{name}.jsonl", data, content_type="application/jsonl")


def results(stores: Stores, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = stores.out.get(output_key(name))
    err = stores.out.get(f"{name}.errors.jsonl")
    assert out is not None and err is not None
    return read_jsonl(out.data), read_jsonl(err.data)


def status(stores: Stores, name: str) -> dict[str, Any]:
    obj = stores.out.get(status_key(name))
    assert obj is not None
    data: dict[str, Any] = json.loads(obj.data)
    return data


def assert_exactly_once(stores: Stores, name: str, good: set[str], bad: int) -> None:
    out, err = results(stores, name)
    ids = Counter(r["custom_id"] for r in out + err)
    assert {cid: ids[cid] for cid in good if ids[cid] != 1} == {}, "every good line exactly once"
    assert len({r["id"] for r in out + err}) == len(out) + len(err)
    assert len(out) + len(err) == len(good) + bad
    st = status(stores, name)
    assert st["status"] == "completed"
    assert st["request_counts"] == {"total": len(out) + len(err), "completed": len(out),
                                    "failed": len(err)}  # fmt: skip
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in out)
    assert all(r["error"]["code"] for r in err)


async def drain(b: Batch, sent: list[dict[str, Any]], seconds: float = 5.0) -> list[str]:
    outcomes = []
    while sent:
        msg = sent.pop(0)
        outcomes.append(await b.resume(msg, Context.with_timeout(seconds)))
    return outcomes


async def test_every_line_ends_in_exactly_one_file(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    data, good, bad = make_input(150, bad_every=25)
    extra = [chat_line("r1", "reject me"), chat_line("f1", "flaky one")]
    data += b"\n".join(json.dumps(x).encode() for x in extra) + b"\n\n"
    upload(memory_stores, "small", data)
    sent: list[dict[str, Any]] = []
    outcome = await batch(memory_stores, sent).start(
        "batch-in/small.jsonl", Context.with_timeout(30)
    )
    assert "completed" in outcome and not sent
    assert_exactly_once(memory_stores, "small", good | {"r1", "f1"}, bad)
    out, err = results(memory_stores, "small")
    by_id = {r["custom_id"]: r for r in out + err}
    assert by_id["r1"]["error"]["code"] == "content_filter"
    assert by_id["r1"]["response"]["status_code"] == 400
    assert by_id["f1"]["error"] is None, "a 429 is retried with its Retry-After"
    assert (
        by_id["req-3"]["response"]["body"]["choices"][0]["message"]["content"] == "PROMPT NUMBER 3"
    )
    st = status(memory_stores, "small")
    assert st["usage"]["total_tokens"] == 4 * len(out)
    assert st["completed_at"] >= st["created_at"]
    assert memory_stores.work.list() == [], "work files are removed once completed"


async def test_redelivered_event_after_completion_calls_nothing(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    data, _, _ = make_input(20)
    upload(memory_stores, "again", data)
    b = batch(memory_stores, [])
    await b.start("batch-in/again.jsonl", Context.with_timeout(30))
    calls = sum(endpoint.calls.values())
    before = memory_stores.out.get(output_key("again"))
    assert "already completed" in await b.start("batch-in/again.jsonl", Context.with_timeout(30))
    assert sum(endpoint.calls.values()) == calls
    assert memory_stores.out.get(output_key("again")) == before


async def test_out_of_time_hands_off_and_the_continuation_finishes(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    endpoint.delay = 0.02
    data, good, _ = make_input(300)
    upload(memory_stores, "long", data)
    sent: list[dict[str, Any]] = []
    b = batch(memory_stores, sent, start_concurrency=4, max_concurrency=8)
    first = await b.start("batch-in/long.jsonl", Context.with_timeout(0.6))
    assert "continued at byte" in first
    assert sent == [{"kind": "batch_shard", "name": "long", "etag": sent[0]["etag"], "shard": 0}]
    st = status(memory_stores, "long")
    assert st["status"] == "in_progress"
    assert 0 < st["request_counts"]["completed"] < 300
    assert 0 < st["progress"]["bytes_done"] < st["progress"]["bytes_total"]
    hops = 0
    while sent:
        hops += 1
        await b.resume(sent.pop(0), Context.with_timeout(0.6))
    assert hops >= 1
    assert_exactly_once(memory_stores, "long", good, 0)


async def test_killed_invocation_resumes_from_its_checkpoint(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    endpoint.delay = 0.01
    data, good, bad = make_input(400, bad_every=50)
    upload(memory_stores, "crash", data)
    b = batch(memory_stores, [], start_concurrency=8, max_concurrency=8)
    task = asyncio.create_task(b.start("batch-in/crash.jsonl", Context.with_timeout(30)))
    while True:  # kill it once a few checkpoints are down
        await asyncio.sleep(0.02)
        st = memory_stores.out.get(status_key("crash"))
        if st and json.loads(st.data)["request_counts"]["total"] > 50:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    called_before = sum(endpoint.calls.values())
    assert memory_stores.out.get(output_key("crash")) is None
    b2 = batch(memory_stores, [], start_concurrency=8, max_concurrency=8)  # a new process
    assert "completed" in await b2.start("batch-in/crash.jsonl", Context.with_timeout(30))
    assert_exactly_once(memory_stores, "crash", good, bad)
    redone = sum(endpoint.calls.values()) + 0 - 400
    assert redone < called_before, "only uncommitted lines were called again"


async def test_two_invocations_of_one_shard_still_write_each_line_once(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    endpoint.delay = 0.005
    data, good, bad = make_input(300, bad_every=30)
    upload(memory_stores, "twice", data)
    b1 = batch(memory_stores, [], max_concurrency=8)
    b2 = batch(memory_stores, [], max_concurrency=8)
    outcomes = await asyncio.gather(
        b1.start("batch-in/twice.jsonl", Context.with_timeout(30)),
        b2.start("batch-in/twice.jsonl", Context.with_timeout(30)),
    )
    assert any("completed" in o for o in outcomes), outcomes
    assert_exactly_once(memory_stores, "twice", good, bad)


async def test_sharded_file_runs_as_messages_and_merges_once(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    data, good, bad = make_input(240, bad_every=40)
    upload(memory_stores, "big", data)
    sent: list[dict[str, Any]] = []
    b = batch(memory_stores, sent, shard_bytes=len(data) // 5 + 1)
    outcome = await b.start("batch-in/big.jsonl", Context.with_timeout(30))
    assert outcome == "big: 5 shards enqueued"
    assert [m["shard"] for m in sent] == list(range(5))
    # the event is redelivered: the shards are not enqueued twice
    await b.start("batch-in/big.jsonl", Context.with_timeout(30))
    assert len(sent) == 5
    messages = sent[:] + sent[:2]  # two shard messages delivered twice
    random.Random(3).shuffle(messages)
    sent.clear()
    workers = [batch(memory_stores, sent, shard_bytes=len(data) // 5) for _ in messages]
    outs = await asyncio.gather(
        *(w.resume(m, Context.with_timeout(30)) for w, m in zip(workers, messages, strict=True))
    )
    assert sum("completed (" in o for o in outs) == 1, outs
    assert_exactly_once(memory_stores, "big", good, bad)
    out, _ = results(memory_stores, "big")
    order = [int(r["custom_id"].split("-")[1]) for r in out]
    assert order == sorted(order), "output keeps input order across shards"
    assert memory_stores.work.list() == []
    late = await b.resume(messages[0], Context.with_timeout(30))
    assert "already completed" in late


async def test_a_new_upload_of_the_same_name_is_a_new_run(
    endpoint: Endpoint, memory_stores: Stores
) -> None:
    b = batch(memory_stores, [])
    data, _, _ = make_input(10, prefix="v1")
    upload(memory_stores, "same", data)
    await b.start("batch-in/same.jsonl", Context.with_timeout(30))
    data2, good2, _ = make_input(12, prefix="v2")
    upload(memory_stores, "same", data2)
    assert "completed" in await b.start("batch-in/same.jsonl", Context.with_timeout(30))
    assert_exactly_once(memory_stores, "same", good2, 0)


async def test_paths_outside_batch_in_are_ignored(
    memory_stores: Stores, endpoint: Endpoint
) -> None:
    b = batch(memory_stores, [])
    assert "ignored" in await b.start("batch-in/notes.txt", Context.with_timeout(5))
    assert "ignored" in await b.start("batch-in/missing.jsonl", Context.with_timeout(5))


async def test_results_held_behind_a_slow_line_are_bounded_in_bytes(
    fake_endpoint: Callable[[Any], None], memory_stores: Stores
) -> None:
    """The first line is slow; every later one answers at once with a big body. Dispatch
    pauses once the finished lines waiting behind the slow one hold max_held_bytes."""
    from shared.batch import engine

    peak: list[int] = []

    async def answer(request: httpx2.Request) -> httpx2.Response:
        text = json.loads(request.content)["messages"][0]["content"]
        if text == "slow":
            await asyncio.sleep(0.5)
        return httpx2.Response(200, json=chat_answer("local-model", "z" * 20_000))

    fake_endpoint(answer)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "local-model",
                       "messages": [{"role": "user", "content": "slow" if i == 0 else f"q{i}"}]}}
             for i in range(200)]  # fmt: skip
    upload(memory_stores, "held", b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    original = engine._Held.__setitem__

    def watch(self: Any, key: int, value: Any) -> None:
        original(self, key, value)
        peak.append(self.bytes)

    engine._Held.__setitem__ = watch  # type: ignore[method-assign]
    try:
        b = batch(memory_stores, [], max_held_bytes=200_000, start_concurrency=64,
                  max_concurrency=64)  # fmt: skip
        assert "completed" in await b.start("batch-in/held.jsonl", Context.with_timeout(30))
    finally:
        engine._Held.__setitem__ = original  # type: ignore[method-assign]
    out, err = results(memory_stores, "held")
    assert len(out) == 200 and not err
    # at most the bound plus what the lines already running when it was reached add
    assert max(peak) <= 200_000 + 64 * 25_000, max(peak)
