"""Batch end to end: devhost (blob trigger + shard queue) over Azurite, gpusim as the model.

Every test asserts the product's promise: each input line ends in exactly one of
output/errors, also when devhost is SIGKILLed mid-batch, and when the file is sharded.
The S3 path runs the Lambda handlers against moto with the same input and must agree.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.azurite import Azurite
from tests.fixtures.batch import gpusim_backend, make_input, read_jsonl
from tests.fixtures.devhost import DevhostFactory, DevhostProcess
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.moto import MotoServer
from tests.fixtures.procs import ROOT

pytestmark = pytest.mark.e2e

N = 2000


def start_host(
    factory: DevhostFactory, azurite: Azurite, sim: Gpusim, **settings: str
) -> DevhostProcess:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "INFER_BACKENDS": gpusim_backend(sim.v1, max_concurrency=64),
        "INFER_BATCH_CHECKPOINT_S": "0.3",
        "INFER_BATCH_STATUS_S": "0.3",
        **settings,
    }
    return factory(
        app_module="tests.e2e.batch_app",
        app_dir=ROOT,
        env=env,
        args=["--blob-poll-interval", "0.2", "--queue-lease", "3", "--poll-interval", "0.05"],
    )


def upload(azurite: Azurite, name: str, data: bytes) -> None:
    container = azurite.blob_service().get_container_client("batch-in")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"{name}.jsonl", data, overwrite=True)


def status(azurite: Azurite, name: str) -> dict[str, Any] | None:
    from azure.core.exceptions import ResourceNotFoundError

    blob = azurite.blob_service().get_blob_client("batch-out", f"{name}.status.json")
    try:
        data: dict[str, Any] = json.loads(blob.download_blob().readall())
    except ResourceNotFoundError:
        return None
    return data


def wait_status(
    azurite: Azurite, name: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(azurite, name)
        if st is not None and ok(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"{name}: status not reached in {timeout}s; last: {status(azurite, name)}")


def outputs(azurite: Azurite, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    c = azurite.blob_service().get_container_client("batch-out")
    out = read_jsonl(c.download_blob(f"{name}.output.jsonl").readall())
    err = read_jsonl(c.download_blob(f"{name}.errors.jsonl").readall())
    return out, err


def assert_exactly_once(
    out: list[dict[str, Any]], err: list[dict[str, Any]], good: set[str], bad: int
) -> None:
    ids = Counter(r["custom_id"] for r in out + err)
    assert {c: ids[c] for c in good if ids[c] != 1} == {}, "a line lost or written twice"
    assert len(out) + len(err) == len(good) + bad
    assert len({r["id"] for r in out + err}) == len(out) + len(err)
    assert sum(1 for r in err if r["response"] is None) == bad, "each malformed line one error"


def done(st: dict[str, Any]) -> bool:
    return bool(st["status"] == "completed")


def test_2000_lines_with_bad_lines_and_injected_failures_complete_exactly_once(
    devhost_factory: DevhostFactory, azurite: Azurite, gpusim: Gpusim
) -> None:
    gpusim.set_rate(0.03, ["429", "500"])
    data, good, bad = make_input(N, bad_every=100, prefix="e2e")
    start_host(devhost_factory, azurite, gpusim)
    upload(azurite, "e2e-2000", data)
    st = wait_status(azurite, "e2e-2000", done)
    out, err = outputs(azurite, "e2e-2000")
    assert_exactly_once(out, err, good, bad)
    assert st["request_counts"] == {"total": N + bad, "completed": len(out), "failed": len(err)}
    assert len(out) >= N - 5, "injected 429/500s are retried, not failed"
    assert st["usage"]["completion_tokens"] == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in out
    )
    assert st["created_at"] <= st["updated_at"] <= st["completed_at"]


def test_devhost_killed_twice_mid_batch_loses_and_duplicates_nothing(
    devhost_factory: DevhostFactory, azurite: Azurite, gpusim_factory: Callable[..., Gpusim]
) -> None:
    sim = gpusim_factory(ttft_base_ms=20, itl_ms=4, max_num_seqs=32)
    data, good, bad = make_input(N, bad_every=200, prefix="kill")
    host = start_host(devhost_factory, azurite, sim)
    upload(azurite, "e2e-kill", data)
    for fraction in (0.2, 0.55):
        wait_status(
            azurite,
            "e2e-kill",
            lambda st, f=fraction: st["progress"]["bytes_done"] >= f * len(data),  # type: ignore[misc]
        )
        host.kill()  # SIGKILL: a crash, no cleanup
        assert status(azurite, "e2e-kill")["status"] == "in_progress"  # type: ignore[index]
        host.start()
    wait_status(azurite, "e2e-kill", done)
    out, err = outputs(azurite, "e2e-kill")
    assert_exactly_once(out, err, good, bad)


def test_sharded_file_runs_on_the_shard_queue_and_merges_once(
    devhost_factory: DevhostFactory, azurite: Azurite, gpusim: Gpusim
) -> None:
    data, good, bad = make_input(N, bad_every=250, prefix="shard")
    start_host(devhost_factory, azurite, gpusim, INFER_BATCH_SHARD_BYTES=str(len(data) // 6 + 1))
    upload(azurite, "e2e-shards", data)
    st = wait_status(azurite, "e2e-shards", done)
    assert st["shards"] == 6
    out, err = outputs(azurite, "e2e-shards")
    assert_exactly_once(out, err, good, bad)
    order = [int(r["custom_id"].split("-")[1]) for r in out]
    assert order == sorted(order)
    work = azurite.blob_service().get_container_client("batch-work")
    deadline = time.monotonic() + 10  # work files go right after the final status
    while list(work.list_blobs(name_starts_with="e2e-shards/")):
        assert time.monotonic() < deadline, "work files left behind"
        time.sleep(0.1)


def test_s3_path_gives_the_same_results(
    batch_env: pytest.MonkeyPatch,
    moto_env: MotoServer,
    gpusim: Gpusim,
    lambda_context: Callable[..., LambdaContext],
) -> None:
    from functions.batch.aws import handler, shard_handler
    from shared.storage.s3 import aws_client

    batch_env.setenv("INFER_BUCKET", "infer-bucket")
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1, max_concurrency=64))
    batch_env.setenv("INFER_BATCH_SHARD_BYTES", "200000")
    s3, sqs = aws_client("s3"), aws_client("sqs")
    s3.create_bucket(Bucket="infer-bucket")
    url = sqs.create_queue(QueueName="batch-shards")["QueueUrl"]
    batch_env.setenv("INFER_BATCH_QUEUE_URL", url)
    data, good, bad = make_input(N, bad_every=100, prefix="e2e")
    s3.put_object(Bucket="infer-bucket", Key="batch-in/e2e s3.jsonl", Body=data)
    event = json.loads(json.dumps(load_event("s3_put")).replace("daily+run+%282025%29", "e2e+s3"))
    assert "shards enqueued" in handler(event, lambda_context(120, "batch"))["outcomes"][0]
    while msgs := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in msgs]
        assert shard_handler({"Records": records}, lambda_context(120, "batch")) == {
            "batchItemFailures": []
        }
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    get = s3.get_object
    out = read_jsonl(get(Bucket="infer-bucket", Key="batch-out/e2e s3.output.jsonl")["Body"].read())
    err = read_jsonl(get(Bucket="infer-bucket", Key="batch-out/e2e s3.errors.jsonl")["Body"].read())
    assert_exactly_once(out, err, good, bad)
    st = json.loads(get(Bucket="infer-bucket", Key="batch-out/e2e s3.status.json")["Body"].read())
    assert st["status"] == "completed"
    assert st["request_counts"] == {"total": N + bad, "completed": N, "failed": bad}
    # same content as the Azure path would give: gpusim output is deterministic per prompt
    by_id = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in out}
    assert len(by_id) == N
