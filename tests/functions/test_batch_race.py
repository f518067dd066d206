"""Two invocations of one batch shard at once (a redelivery while the first still runs),
against an endpoint that answers every call differently (gpusim ``--vary-answers``), on
Azure Storage (Azurite) and S3 (moto).

Both invocations read the same checkpoint, call the model for every line of the shard and
then try to commit. Exactly one compare-and-swap on the checkpoint wins. The output must
hold each line exactly once, with the answer the winning invocation got, and usage totals
that add up: a loser that overwrote the winner's part file would show up as the other
invocation's answers (different text and lengths), or as totals that do not match.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.azurite import Azurite
from tests.fixtures.batch import gpusim_backend, make_input, read_jsonl
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.iam import aws_function

NAME = "race"
LINES = 40
LOST = "another invocation owns it"
DATA, GOOD, _ = make_input(LINES, prefix=NAME)


@pytest.fixture(autouse=True)
def usable_event_loop_after() -> Iterator[None]:
    """asyncio.run (here, or inside Powertools' batch processor) leaves the main thread with
    no event loop; Mangum's handlers, called by later tests, need one to exist."""
    yield
    asyncio.set_event_loop_policy(None)


class Invocation:
    """One invocation's ``Batch`` with its own service (as another instance would have),
    remembering the answer it got for each custom_id."""

    def __init__(self, sent: list[dict[str, Any]]) -> None:
        from shared.batch.runner import Batch
        from shared.service import Service
        from shared.settings import get_settings

        self.answers: dict[str, str] = {}
        service = Service.from_settings(get_settings())
        complete = service.complete

        async def spy(op: Any, payload: dict[str, Any], ctx: Any) -> Any:
            result = await complete(op, payload, ctx)
            prompt = payload["messages"][0]["content"]  # "prompt number {i}"
            cid = f"{NAME}-{prompt.rsplit(' ', 1)[-1]}"
            self.answers[cid] = result.json()["choices"][0]["message"]["content"]
            return result

        service.complete = spy  # type: ignore[method-assign]
        self.batch = Batch(service=service, send=sent.append)


@pytest.fixture
def vary_sim(gpusim_factory: Callable[..., Gpusim]) -> Gpusim:
    # answers take ~0.2 s: both invocations have read the checkpoint before either commits
    return gpusim_factory(vary_answers=True, ttft_base_ms=200, max_output_tokens=40)


class Store:
    def __init__(self, put: Callable[[str, bytes], None], get: Callable[[str], bytes]) -> None:
        self.put, self.get = put, get


@pytest.fixture(params=["azure", "s3"])
def store(
    request: pytest.FixtureRequest, batch_env: pytest.MonkeyPatch, vary_sim: Gpusim
) -> Iterator[Store]:
    from shared.lifecycle import reset_all

    batch_env.setenv("INFER_BACKENDS", gpusim_backend(vary_sim.v1))
    batch_env.setenv("INFER_BATCH_CHECKPOINT_S", "60")  # commit once, at the end
    batch_env.setenv("INFER_BATCH_SHARD_BYTES", str(len(DATA) // 2 + 1))  # two shards
    if request.param == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        batch_env.setenv("AzureWebJobsStorage", azurite.connection_string)
        svc = azurite.blob_service()

        def put(key: str, data: bytes) -> None:
            container = svc.get_container_client("batch-in")
            if not container.exists():
                container.create_container()
            container.upload_blob(key, data, overwrite=True)

        def get(key: str) -> bytes:
            data: bytes = svc.get_blob_client("batch-out", key).download_blob().readall()
            return data

    else:
        request.getfixturevalue("moto_env")
        from shared.storage.s3 import aws_client

        batch_env.setenv("INFER_BUCKET", "race-bucket")
        s3 = aws_client("s3")
        s3.create_bucket(Bucket="race-bucket")

        def put(key: str, data: bytes) -> None:
            s3.put_object(Bucket="race-bucket", Key=f"batch-in/{key}", Body=data)

        def get(key: str) -> bytes:
            body: bytes = s3.get_object(Bucket="race-bucket", Key=f"batch-out/{key}")["Body"].read()
            return body

    reset_all()
    yield Store(put, get)


def test_two_invocations_of_one_shard_commit_one_answer_per_line(store: Store) -> None:
    from shared.batch.runner import invocation_context

    store.put(f"{NAME}.jsonl", DATA)
    sent: list[dict[str, Any]] = []

    async def scenario() -> tuple[list[str], Invocation, Invocation, Invocation]:
        ctx = invocation_context(remaining_s=60)
        # two shards: shard 0 is raced, shard 1 runs once and merges
        planner = Invocation(sent)
        with aws_function("BatchFunction"):
            assert "2 shards enqueued" in await planner.batch.start(f"batch-in/{NAME}.jsonl", ctx)
        first = next(m for m in sent if m["shard"] == 0)
        last = next(m for m in sent if m["shard"] == 1)
        a, b, c = Invocation(sent), Invocation(sent), Invocation(sent)
        with aws_function("BatchShardFunction"):
            outcomes = list(
                await asyncio.gather(a.batch.resume(first, ctx), b.batch.resume(first, ctx))
            )
            await c.batch.resume(last, ctx)
        return outcomes, a, b, c

    outcomes, a, b, c = asyncio.run(scenario())
    lost = [LOST in o for o in outcomes]
    assert lost.count(True) == 1, outcomes  # both ran, one lost the compare-and-swap
    winner, loser = (b, a) if lost[0] else (a, b)
    raced = set(winner.answers)
    assert raced and set(loser.answers) & raced, "the loser called the model too"
    assert any(loser.answers[k] != winner.answers[k] for k in set(loser.answers) & raced)

    out = read_jsonl(store.get(f"{NAME}.output.jsonl"))
    assert read_jsonl(store.get(f"{NAME}.errors.jsonl")) == []
    ids = Counter(r["custom_id"] for r in out)
    assert {k: n for k, n in ids.items() if n != 1} == {} and set(ids) == GOOD
    content = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
               for r in out}  # fmt: skip
    expected = {**winner.answers, **c.answers}
    wrong = {k for k in GOOD if content[k] != expected[k]}
    assert wrong == set(), f"{len(wrong)} lines hold the losing invocation's answer"
    status = json.loads(store.get(f"{NAME}.status.json"))
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert status["usage"]["completion_tokens"] == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in out
    )
