"""A local stand-in for Lambda's SQS event source mapping, for bench/queue.py on AWS (moto).

One process; ``--batches`` poller threads, each like one warm Lambda instance: receive up
to 10 messages, call ``functions.queue_worker.aws.handler`` with the SQS event Lambda would
build, then delete the records not reported in ``batchItemFailures`` with one
``DeleteMessageBatch`` (what the mapping does with a partial batch response). Each thread
keeps its event loop between batches, as a warm Lambda runtime does.

Storage calls are counted by kind in this process (``bench/storage_ops.py``), the mapping's
own receive/delete calls included. ``GET /stats`` on ``--port`` answers the counts and the
process CPU time.

    python -m bench.sqs_host --queue-url URL --port PORT [--batches 5]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import threading
import time
import uuid
from typing import Any

from bench import storage_ops

MAX_BATCH = 10


class _Context:
    function_name = "queue_worker"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:queue_worker"
    memory_limit_in_mb = 512
    log_group_name = "/aws/lambda/queue_worker"
    log_stream_name = "local"

    def __init__(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s
        self.aws_request_id = uuid.uuid4().hex

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _record(message: dict[str, Any], arn: str) -> dict[str, Any]:
    attrs = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attrs.get("SentTimestamp", "0"),
            "SenderId": attrs.get("SenderId", "local"),
            "ApproximateFirstReceiveTimestamp": attrs.get("ApproximateFirstReceiveTimestamp", "0"),
        },
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": "us-east-1",
    }


def poll(queue_url: str, arn: str, timeout_s: float, stop: threading.Event) -> None:
    from functions.queue_worker.aws import handler
    from shared.storage.s3 import aws_client

    sqs = aws_client("sqs")
    while not stop.is_set():
        t0 = time.thread_time()
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=MAX_BATCH,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
        )
        messages = got.get("Messages", [])
        storage_ops.add_host_cpu(time.thread_time() - t0)
        if not messages:
            continue
        event = {"Records": [_record(m, arn) for m in messages]}
        try:
            out = handler(event, _Context(timeout_s))
            failed = {f["itemIdentifier"] for f in out.get("batchItemFailures", [])}
        except Exception as exc:  # the whole batch returns to the queue
            print(f"batch failed: {exc!r}", flush=True)
            continue
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            t0 = time.thread_time()
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
            storage_ops.add_host_cpu(time.thread_time() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queue-url", required=True)
    p.add_argument("--queue-arn", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batches", type=int, default=5, help="batches in flight (instances)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="the function's timeout")
    args = p.parse_args()
    os.environ.setdefault("LAMBDA_TASK_ROOT", os.getcwd())  # Powertools: keep the loop warm
    storage_ops.install_aws()

    class Stats(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(storage_ops.snapshot()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Stats)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=poll, args=(args.queue_url, args.queue_arn, args.timeout_s, stop), daemon=True
        )
        for _ in range(args.batches)
    ]
    for t in threads:
        t.start()
    try:
        server.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
